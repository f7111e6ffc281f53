package inbox_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

func TestMigrateSQLNamesEverythingQuoted(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		table schema.Table
		want  []string
	}{
		{schema.Table{}, []string{`create table if not exists "inbox"`, `function "inbox_claim"(consumer text, message_id uuid)`, `"inbox_received_at_idx" on "inbox" (received_at)`}},
		{schema.Table{Schema: "s", Name: "events_inbox"}, []string{`create table if not exists "s"."events_inbox"`, `function "s"."events_inbox_claim"(`}},
		// A name holding the dollar-quote tag gets another tag.
		{schema.Table{Schema: "s", Name: `we"ird$body$`}, []string{`"s"."we""ird$body$_claim"`, "as $body1$\n"}},
	} {
		sql := inbox.MigrateSQL(tt.table)
		for _, w := range tt.want {
			if !strings.Contains(sql, w) {
				t.Errorf("MigrateSQL(%+v) lacks %q:\n%s", tt.table, w, sql)
			}
		}
	}
}

// The table, its index and the function named after it, in a schema of
// the test's own; an odd name works as well as a plain one.
func TestMigrateCreatesInbox(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := testenv.New(t, testenv.WithoutMigrate())
	for _, name := range []string{"events_inbox", `odd "in$body$box`} {
		tbl := schema.Table{Schema: env.Name, Name: name}
		if err := inbox.Migrate(ctx, testenv.ConnAt(t, env.URL), tbl); err != nil {
			t.Fatalf("Migrate(%s): %v", tbl, err)
		}
		var cols string
		if err := env.Pool.QueryRow(ctx, `select string_agg(column_name || ' ' || data_type || ' ' || is_nullable, ', ' order by ordinal_position)
			from information_schema.columns where table_schema = $1 and table_name = $2`, env.Name, name).Scan(&cols); err != nil {
			t.Fatal(err)
		}
		if want := "consumer text NO, message_id uuid NO, received_at timestamp with time zone NO"; cols != want {
			t.Errorf("%s columns: %s; want %s", tbl, cols, want)
		}
		var pk, idx string
		if err := env.Pool.QueryRow(ctx, `select pg_get_constraintdef(c.oid), (select string_agg(indexdef, ';') from pg_indexes
			where schemaname = $1 and tablename = $2 and indexdef like '%(received_at)')
			from pg_constraint c where c.conrelid = $3::regclass and c.contype = 'p'`, env.Name, name, tbl.Ident()).Scan(&pk, &idx); err != nil {
			t.Fatal(err)
		}
		if pk != "PRIMARY KEY (consumer, message_id)" || idx == "" {
			t.Errorf("%s: primary key %q, received_at index %q", tbl, pk, idx)
		}
		ib := inbox.New(tbl)
		id := outbox.NewMessageID().String()
		for i, want := range []bool{true, false} {
			tx, err := env.Pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ib.Claim(ctx, tx, "billing", id)
			if err != nil || got != want {
				t.Errorf("%s: claim %d: %t, %v; want %t", tbl, i+1, got, err, want)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// Consumers starting at once all migrate; none fails, and a second round
// changes nothing.
func TestMigrateConcurrentAndIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := testenv.New(t, testenv.WithoutMigrate())
	tbl := schema.Table{Schema: env.Name + "_inbox", Name: "inbox"} // a schema Migrate creates
	t.Cleanup(func() {
		_, _ = env.Pool.Exec(context.Background(), "drop schema if exists "+pgx.Identifier{tbl.Schema}.Sanitize()+" cascade")
	})
	conns := make([]*pgx.Conn, 8)
	for i := range conns {
		conns[i] = testenv.ConnAt(t, env.URL)
	}
	for round := range 2 {
		var wg sync.WaitGroup
		errs := make([]error, len(conns))
		for i, c := range conns {
			wg.Go(func() { errs[i] = inbox.Migrate(ctx, c, tbl) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round+1, err)
		}
	}
	var tables, funcs int
	if err := env.Pool.QueryRow(ctx, `select (select count(*) from pg_tables where schemaname = $1),
		(select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = $1)`, tbl.Schema).Scan(&tables, &funcs); err != nil {
		t.Fatal(err)
	}
	if tables != 1 || funcs != 1 {
		t.Errorf("%d tables and %d functions in %s; want 1 and 1", tables, funcs, tbl.Schema)
	}
}

// The SQL function refuses a null consumer or message_id with a clear
// error instead of claiming nothing.
func TestClaimFunctionRefusesNull(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	fn := b.inbox.Derived("claim")
	for _, args := range []string{"null, gen_random_uuid()", "'billing', null", "null, null"} {
		var got *bool
		err := b.env.Pool.QueryRow(ctx, "select "+fn+"("+args+")").Scan(&got)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "22004" || !strings.Contains(pe.Message, "consumer and message_id must not be null") {
			t.Errorf("claim(%s): %v, %v; want SQLSTATE 22004 naming both arguments", args, got, err)
		}
	}
	// The Go helper refuses a missing or malformed id before any SQL.
	tx, err := b.env.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	ib := inbox.New(b.inbox)
	for _, id := range []string{"", "not-a-uuid", "0b6c2f3e-8f0f-4a41-9d7a-6c3c0f7c1b2"} {
		if ok, err := ib.Claim(ctx, tx, "billing", id); ok || !errors.Is(err, inbox.ErrMessageID) {
			t.Errorf("Claim(%q) = %t, %v; want ErrMessageID", id, ok, err)
		}
	}
	if ok, err := ib.Claim(ctx, tx, "billing", outbox.NewMessageID().String()); !ok || err != nil {
		t.Errorf("claim after refused ids: %t, %v; the transaction should be intact", ok, err)
	}
}
