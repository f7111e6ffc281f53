package outbox_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
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
