package outbox_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

// TestEnqueueSearchPath checks that the package-level functions write to
// "outbox" in the connection's search_path.
func TestEnqueueSearchPath(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	path := pgx.Identifier{b.env.Name}.Sanitize()

	conn := testenv.Conn(t)
	if _, err := conn.Exec(ctx, "set search_path to "+path); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Enqueue(ctx, conn, outbox.Message{RoutingKey: "pgx"}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}

	sconn, err := b.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sconn.Close() }()
	if _, err := sconn.ExecContext(ctx, "set search_path to "+path); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.EnqueueSQL(ctx, sconn, outbox.Message{RoutingKey: "sql"}); err != nil {
		t.Fatalf("EnqueueSQL: %v", err)
	}
	if rows := readRows(t, b.env); len(rows) != 2 || rows[0].RoutingKey != "pgx" || rows[1].RoutingKey != "sql" {
		t.Errorf("rows %+v, want pgx and sql", rows)
	}
}

// TestEnqueueOddTableNames checks that table and schema names reach SQL
// only as quoted identifiers.
func TestEnqueueOddTableNames(t *testing.T) {
	t.Parallel()
	for _, name := range []string{
		"Mixed Case",
		`with "quotes"`,
		"dotted.name",
		`x"; drop table canary; --`,
		`x'); drop table canary; --`,
		"ünïcödé",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := testenv.New(t, testenv.WithoutMigrate())
			ctx := context.Background()
			// The schema is odd too: the test's own name plus quotes and a space.
			tbl := schema.Table{Schema: e.Name + ` "s" p`, Name: name}
			if _, err := schema.Migrate(ctx, testenv.Conn(t), tbl); err != nil {
				t.Fatalf("migrate %s: %v", tbl, err)
			}
			t.Cleanup(func() {
				_, _ = e.Pool.Exec(context.Background(), "drop schema "+pgx.Identifier{tbl.Schema}.Sanitize()+" cascade")
			})
			canary := pgx.Identifier{e.Name, "canary"}.Sanitize()
			if _, err := e.Pool.Exec(ctx, "create table "+canary+" ()"); err != nil {
				t.Fatal(err)
			}

			// Written the way OUTBOX_TABLE takes it.
			w := newWriter(t, tbl.Ident())
			if _, err := w.Enqueue(ctx, e.Pool, outbox.Message{RoutingKey: "pgx"}); err != nil {
				t.Fatalf("Enqueue: %v", err)
			}
			db := openSQL(t)
			if _, err := w.EnqueueSQL(ctx, db, outbox.Message{RoutingKey: "sql"}); err != nil {
				t.Fatalf("EnqueueSQL: %v", err)
			}
			var n int
			if err := e.Pool.QueryRow(ctx, "select count(*) from "+tbl.Ident()).Scan(&n); err != nil || n != 2 {
				t.Errorf("%s holds %d rows (%v), want 2", tbl, n, err)
			}
			if err := e.Pool.QueryRow(ctx, "select count(*) from "+canary).Scan(&n); err != nil {
				t.Errorf("canary table: %v", err)
			}
		})
	}
}

func TestNewWriter(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "outbox", "app.outbox", `"My Schema"."odd.name"`} {
		if _, err := outbox.NewWriter(s); err != nil {
			t.Errorf("NewWriter(%q): %v", s, err)
		}
	}
	for _, s := range []string{"a.b.c", `"unterminated`, ".outbox", `out"box`, "outbox."} {
		if _, err := outbox.NewWriter(s); err == nil {
			t.Errorf("NewWriter(%q) succeeded, want an error", s)
		}
	}
}
