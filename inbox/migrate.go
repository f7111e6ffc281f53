package inbox

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/schema"
)

// TableDefault is the inbox table's name when none is given
// (OUTBOX_INBOX_TABLE unset).
const TableDefault = "inbox"

// DefaultTable is TableDefault, parsed: the table the package-level Claim
// and ClaimSQL use. An unqualified name is found through the search_path.
var DefaultTable = schema.Table{Name: TableDefault}

//go:embed inbox.sql
var migrationText string

var migrationTmpl = template.Must(template.New("inbox.sql").Option("missingkey=error").Parse(migrationText))

// names are the quoted identifiers derived from an inbox table. The claim
// function is named after the table: inbox → inbox_claim,
// s.events_inbox → s.events_inbox_claim.
type names struct {
	Table string // the table, qualified if its schema is given
	Claim string // the claim function, in the table's schema
	Index string // the received_at index (unqualified: it lives beside the table)
	Q     string // a dollar-quote tag no name contains
}

func namesOf(t schema.Table) names {
	if t.Name == "" {
		t = DefaultTable
	}
	return names{Table: t.Ident(), Claim: t.Derived("claim"), Index: t.Local("received_at_idx"), Q: t.DollarQuote()}
}

// MigrateSQL returns the SQL that creates table t's inbox (the table, its
// received_at index and its claim function), for `outbox-relay inbox
// migrate -print`: a team that does not use Go can apply it with psql or
// its own migration tool. Every statement is idempotent. A zero Table means
// DefaultTable.
func MigrateSQL(t schema.Table) string {
	var buf bytes.Buffer
	if err := migrationTmpl.Execute(&buf, namesOf(t)); err != nil {
		// The template and its data are fixed at compile time.
		panic(fmt.Sprintf("render inbox migration: %v", err))
	}
	return buf.String()
}

// migrateTimeout bounds the migration's statements once the lock is held:
// creating a table, an index on an empty table and a function takes
// milliseconds, but `create index if not exists` on an existing, busy table
// waits for writers.
const migrateTimeout = time.Minute

// Migrate creates table t's inbox in the database conn is connected to (the
// consumer's own), and its schema if t names one that does not exist. It is
// idempotent, and safe when several consumers start at once: it holds a
// session advisory lock derived from the table's name while it works, so
// concurrent callers wait and then find nothing to do. conn must be a
// session-level connection (not through a transaction-mode pooler). An
// unqualified t is resolved through conn's search_path first, so that every
// caller takes the same lock. A zero Table means DefaultTable.
func Migrate(ctx context.Context, conn *pgx.Conn, t schema.Table) error {
	if t.Name == "" {
		t = DefaultTable
	}
	t, err := t.Resolve(ctx, conn)
	if err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	key := t.LockKey("inbox-migrate")
	if _, err := conn.Exec(ctx, "select pg_advisory_lock($1)", key); err != nil {
		return fmt.Errorf("inbox: migrate %s: take lock: %w", t, err)
	}
	defer func() {
		// Unlock even when ctx is done; if the connection is gone the lock is too.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = conn.Exec(uctx, "select pg_advisory_unlock($1)", key)
	}()
	ctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "create schema if not exists "+pgx.Identifier{t.Schema}.Sanitize()); err != nil {
			return err
		}
		// No arguments: the simple protocol, which runs several statements.
		_, err := tx.Exec(ctx, MigrateSQL(t), pgx.QueryExecModeSimpleProtocol)
		return err
	})
	if err != nil {
		return fmt.Errorf("inbox: migrate %s: %w", t, err)
	}
	return nil
}
