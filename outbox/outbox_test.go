package outbox_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

type testBundle struct {
	env *testenv.Env
	w   *outbox.Writer
	db  *sql.DB // database/sql through pgx's stdlib driver
}

func setup(t *testing.T, opts ...testenv.Option) *testBundle {
	t.Helper()
	e := testenv.New(t, opts...)
	return &testBundle{env: e, w: newWriter(t, e.Table.Ident()), db: openSQL(t)}
}

func newWriter(t *testing.T, table string) *outbox.Writer {
	t.Helper()
	w, err := outbox.NewWriter(table)
	if err != nil {
		t.Fatalf("NewWriter(%q): %v", table, err)
	}
	return w
}

func openSQL(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", testenv.DatabaseURL())
	if err != nil {
		t.Fatalf("open database/sql: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// handle enqueues through one kind of database handle.
type handle struct {
	name string
	// enqueue opens a handle of its kind, enqueues msgs through w and, for
	// transactions, commits or rolls back.
	enqueue func(ctx context.Context, t *testing.T, b *testBundle, w *outbox.Writer, msgs ...outbox.Message) ([]outbox.MessageID, error)
	// committed says whether the rows are in the table afterwards.
	committed bool
}

// handles lists every kind of handle Enqueue and EnqueueSQL accept.
func handles() []handle {
	pgxTx := func(commit bool) func(context.Context, *testing.T, *testBundle, *outbox.Writer, ...outbox.Message) ([]outbox.MessageID, error) {
		return func(ctx context.Context, t *testing.T, b *testBundle, w *outbox.Writer, msgs ...outbox.Message) ([]outbox.MessageID, error) {
			tx, err := b.env.Pool.Begin(ctx)
			if err != nil {
				t.Fatalf("begin: %v", err)
			}
			defer func() { _ = tx.Rollback(ctx) }()
			ids, err := w.Enqueue(ctx, tx, msgs...)
			if err != nil {
				return nil, err
			}
			assertCount(t, b, 0) // not visible before commit
			if commit {
				err = tx.Commit(ctx)
			} else {
				err = tx.Rollback(ctx)
			}
			if err != nil {
				t.Fatalf("end transaction: %v", err)
			}
			return ids, nil
		}
	}
	sqlTx := func(commit bool) func(context.Context, *testing.T, *testBundle, *outbox.Writer, ...outbox.Message) ([]outbox.MessageID, error) {
		return func(ctx context.Context, t *testing.T, b *testBundle, w *outbox.Writer, msgs ...outbox.Message) ([]outbox.MessageID, error) {
			tx, err := b.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatalf("begin: %v", err)
			}
			defer func() { _ = tx.Rollback() }()
			ids, err := w.EnqueueSQL(ctx, tx, msgs...)
			if err != nil {
				return nil, err
			}
			assertCount(t, b, 0)
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatalf("end transaction: %v", err)
			}
			return ids, nil
		}
	}
	pgxConn := func(mode pgx.QueryExecMode) func(context.Context, *testing.T, *testBundle, *outbox.Writer, ...outbox.Message) ([]outbox.MessageID, error) {
		return func(ctx context.Context, t *testing.T, b *testBundle, w *outbox.Writer, msgs ...outbox.Message) ([]outbox.MessageID, error) {
			cfg, err := pgx.ParseConfig(testenv.DatabaseURL())
			if err != nil {
				t.Fatal(err)
			}
			cfg.DefaultQueryExecMode = mode
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer func() { _ = conn.Close(ctx) }()
			return w.Enqueue(ctx, conn, msgs...)
		}
	}
	return []handle{
		{name: "pgx.Tx commit", enqueue: pgxTx(true), committed: true},
		{name: "pgx.Tx rollback", enqueue: pgxTx(false)},
		{name: "pgx.Conn", enqueue: pgxConn(pgx.QueryExecModeCacheStatement), committed: true},
		// What connections through a transaction-mode pooler use.
		{name: "pgx.Conn simple protocol", enqueue: pgxConn(pgx.QueryExecModeSimpleProtocol), committed: true},
		{name: "pgx.Conn exec mode", enqueue: pgxConn(pgx.QueryExecModeExec), committed: true},
		{name: "pgx.Conn cache describe", enqueue: pgxConn(pgx.QueryExecModeCacheDescribe), committed: true},
		{name: "pgx.Conn describe exec", enqueue: pgxConn(pgx.QueryExecModeDescribeExec), committed: true},
		{name: "pgxpool.Pool", committed: true,
			enqueue: func(ctx context.Context, t *testing.T, b *testBundle, w *outbox.Writer, msgs ...outbox.Message) ([]outbox.MessageID, error) {
				return w.Enqueue(ctx, b.env.Pool, msgs...)
			}},
		{name: "sql.DB", committed: true,
			enqueue: func(ctx context.Context, t *testing.T, b *testBundle, w *outbox.Writer, msgs ...outbox.Message) ([]outbox.MessageID, error) {
				return w.EnqueueSQL(ctx, b.db, msgs...)
			}},
		{name: "sql.Tx commit", enqueue: sqlTx(true), committed: true},
		{name: "sql.Tx rollback", enqueue: sqlTx(false)},
		{name: "sql.Conn", committed: true,
			enqueue: func(ctx context.Context, t *testing.T, b *testBundle, w *outbox.Writer, msgs ...outbox.Message) ([]outbox.MessageID, error) {
				conn, err := b.db.Conn(ctx)
				if err != nil {
					t.Fatalf("conn: %v", err)
				}
				defer func() { _ = conn.Close() }()
				return w.EnqueueSQL(ctx, conn, msgs...)
			}},
	}
}

// row is a row of the outbox table as stored.
type row struct {
	ID           int64
	Exchange     string
	RoutingKey   string
	PartitionKey *string
	MessageID    string
	ContentType  *string
	Headers      *string
	Payload      []byte
	CreatedAt    time.Time
	AvailableAt  time.Time
}

func readRows(t *testing.T, e *testenv.Env) []row {
	t.Helper()
	rows, err := e.Pool.Query(context.Background(), `select id, exchange, routing_key, partition_key, message_id::text,
		content_type, headers::text, payload, created_at, available_at from `+e.Table.Ident()+` order by id`)
	if err != nil {
		t.Fatalf("read rows: %v", err)
	}
	rs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	if err != nil {
		t.Fatalf("read rows: %v", err)
	}
	return rs
}

func assertCount(t *testing.T, b *testBundle, want int) {
	t.Helper()
	if live, dead := b.env.Pending(t); live != want || dead != 0 {
		t.Fatalf("table holds %d live and %d dead rows, want %d live", live, dead, want)
	}
}

// decodeJSON decodes s keeping numbers as written, for comparing headers.
func decodeJSON(t *testing.T, s string) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %s: %v", s, err)
	}
	return v
}

func TestEnqueue(t *testing.T) {
	t.Parallel()
	for _, h := range handles() {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := context.Background()

			given := outbox.NewMessageID()
			delay := time.Now().Add(time.Hour).Truncate(time.Microsecond)
			msgs := []outbox.Message{
				{RoutingKey: "order.created", Payload: []byte("first")},
				{
					Exchange: "orders", RoutingKey: "order.paid", PartitionKey: "order-42", MessageID: given,
					ContentType: "application/json", Payload: []byte(`{"id":42}`), AvailableAt: delay,
					Headers: map[string]any{
						"x-retry": 3, "s": "text", "f": 1.5, "b": true, "none": nil, "max": int64(math.MaxInt64),
						"u": uint64(7), "typed": []string{"a"}, "nested": map[string]any{"list": []any{1, "two", nil}},
					},
				},
				{RoutingKey: "order.shipped", PartitionKey: "order-42", Headers: map[string]any{}}, // nil payload
			}
			ids, err := h.enqueue(ctx, t, b, b.w, msgs...)
			if err != nil {
				t.Fatalf("enqueue: %v", err)
			}
			if len(ids) != len(msgs) {
				t.Fatalf("got %d ids for %d messages", len(ids), len(msgs))
			}
			if ids[1] != given {
				t.Errorf("ids[1] = %v, want the given %v", ids[1], given)
			}
			if ids[0].IsZero() || ids[2].IsZero() || ids[0] == ids[2] {
				t.Errorf("generated ids %v and %v are zero or equal", ids[0], ids[2])
			}

			rows := readRows(t, b.env)
			if !h.committed {
				if len(rows) != 0 {
					t.Fatalf("rolled back, but the table holds %d rows", len(rows))
				}
				return
			}
			if len(rows) != len(msgs) {
				t.Fatalf("table holds %d rows, want %d", len(rows), len(msgs))
			}
			for i, r := range rows {
				if r.MessageID != ids[i].String() {
					t.Errorf("row %d: message_id %s, want %s", i, r.MessageID, ids[i])
				}
				if r.RoutingKey != msgs[i].RoutingKey || r.Exchange != msgs[i].Exchange {
					t.Errorf("row %d: exchange %q, routing key %q; want %q, %q", i, r.Exchange, r.RoutingKey, msgs[i].Exchange, msgs[i].RoutingKey)
				}
				if !bytes.Equal(r.Payload, msgs[i].Payload) || r.Payload == nil {
					t.Errorf("row %d: payload %q, want %q", i, r.Payload, msgs[i].Payload)
				}
			}

			r := rows[0]
			if r.PartitionKey != nil || r.ContentType != nil || r.Headers != nil {
				t.Errorf("row 0: partition key %v, content type %v, headers %v; want nulls", r.PartitionKey, r.ContentType, r.Headers)
			}
			if !r.AvailableAt.Equal(r.CreatedAt) {
				t.Errorf("row 0: available_at %v, want created_at %v", r.AvailableAt, r.CreatedAt)
			}

			r = rows[1]
			if r.PartitionKey == nil || *r.PartitionKey != "order-42" || r.ContentType == nil || *r.ContentType != "application/json" {
				t.Errorf("row 1: partition key %v, content type %v", r.PartitionKey, r.ContentType)
			}
			if !r.AvailableAt.Equal(delay) {
				t.Errorf("row 1: available_at %v, want %v", r.AvailableAt, delay)
			}
			want := decodeJSON(t, `{"x-retry": 3, "s": "text", "f": 1.5, "b": true, "none": null, "max": 9223372036854775807,
				"u": 7, "typed": ["a"], "nested": {"list": [1, "two", null]}}`)
			if r.Headers == nil {
				t.Fatal("row 1: headers are null")
			}
			if got := decodeJSON(t, *r.Headers); !reflect.DeepEqual(got, want) {
				t.Errorf("row 1: headers %s, want %v", *r.Headers, want)
			}

			if r := rows[2]; r.Headers == nil || *r.Headers != "{}" || len(r.Payload) != 0 {
				t.Errorf("row 2: headers %v, payload %q; want {} and empty", r.Headers, r.Payload)
			}
		})
	}
}

// TestEnqueueOrder checks that ids, and so the relay's order within a
// partition key, follow the order of a large batch, and that the returned
// message ids line up with it.
func TestEnqueueOrder(t *testing.T) {
	t.Parallel()
	for _, h := range handles() {
		if !h.committed {
			continue
		}
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			const n = 2000
			msgs := make([]outbox.Message, n)
			for i := range msgs {
				msgs[i] = outbox.Message{RoutingKey: "rk", PartitionKey: "k", Payload: []byte(strconv.Itoa(i))}
				if i%3 == 0 {
					msgs[i].MessageID = outbox.NewMessageID()
				}
			}
			ids, err := h.enqueue(context.Background(), t, b, b.w, msgs...)
			if err != nil {
				t.Fatalf("enqueue: %v", err)
			}
			rows := readRows(t, b.env)
			if len(rows) != n || len(ids) != n {
				t.Fatalf("%d rows, %d ids; want %d", len(rows), len(ids), n)
			}
			for i, r := range rows {
				if string(r.Payload) != strconv.Itoa(i) || r.MessageID != ids[i].String() {
					t.Fatalf("row %d (by id) holds message %s with id %s; want message %d with id %s", i, r.Payload, r.MessageID, i, ids[i])
				}
				if !msgs[i].MessageID.IsZero() && ids[i] != msgs[i].MessageID {
					t.Fatalf("ids[%d] = %s, want the given %s", i, ids[i], msgs[i].MessageID)
				}
			}
		})
	}
}

// TestEnqueueRefusedBatch checks that one bad message keeps the whole batch
// out, whatever the handle.
func TestEnqueueRefusedBatch(t *testing.T) {
	t.Parallel()
	for _, h := range handles() {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			msgs := []outbox.Message{
				{RoutingKey: "a", Payload: []byte("1")},
				{RoutingKey: "b", Payload: []byte("2")},
				{RoutingKey: "c", Headers: map[string]any{"x-retry": math.NaN()}},
			}
			_, err := h.enqueue(context.Background(), t, b, b.w, msgs...)
			const want = `outbox: message 2: header "x-retry": NaN cannot be carried`
			if err == nil || err.Error() != want {
				t.Fatalf("got error %v, want %q", err, want)
			}
			var me *outbox.MessageError
			if !errors.Is(err, outbox.ErrInvalidHeader) || !errors.As(err, &me) || me.Index != 2 {
				t.Errorf("error %v: want ErrInvalidHeader in a MessageError for index 2", err)
			}
			assertCount(t, b, 0)
		})
	}
}

// TestEnqueueDatabaseError checks that a failing statement is reported
// with its PostgreSQL error and writes nothing.
func TestEnqueueDatabaseError(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	missing := newWriter(t, pgx.Identifier{b.env.Name, "missing"}.Sanitize())

	_, err := missing.Enqueue(ctx, b.env.Pool, outbox.Message{RoutingKey: "rk"})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Fatalf("got %v, want undefined_table", err)
	}
	want := fmt.Sprintf(`outbox: enqueue into "%s"."missing": `, b.env.Name)
	if got := err.Error(); len(got) < len(want) || got[:len(want)] != want {
		t.Errorf("error %q does not start with %q", got, want)
	}
	if _, err := missing.EnqueueSQL(ctx, b.db, outbox.Message{RoutingKey: "rk"}); !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Errorf("EnqueueSQL: got %v, want undefined_table", err)
	}

	// A failure inside the caller's transaction rolls back with it.
	tx, err := b.env.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := b.w.Enqueue(ctx, tx, outbox.Message{RoutingKey: "ok"}); err != nil {
		t.Fatal(err)
	}
	if _, err := missing.Enqueue(ctx, tx, outbox.Message{RoutingKey: "rk"}); err == nil {
		t.Fatal("enqueue into a missing table succeeded")
	}
	if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Errorf("commit of an aborted transaction: got %v", err)
	}
	assertCount(t, b, 0)
}

func TestEnqueueNothing(t *testing.T) {
	t.Parallel()
	// No messages, no round trip: the nil handle is never used.
	if ids, err := outbox.Enqueue(context.Background(), nil); ids != nil || err != nil {
		t.Errorf("Enqueue() = %v, %v", ids, err)
	}
	if ids, err := outbox.EnqueueSQL(context.Background(), nil); ids != nil || err != nil {
		t.Errorf("EnqueueSQL() = %v, %v", ids, err)
	}
}

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
