// Package schema holds the outbox table's versioned SQL migrations and applies
// them.
//
// The migrations are plain SQL templates in migrations/, embedded in the
// binary. Placeholders stand only for quoted identifiers derived from the
// table name (see Table), so a team that does not use Go can print them with
// `outbox-relay migrate -print` and apply them with psql or its own tool.
//
// Migrate applies pending migrations under a session advisory lock, one
// transaction each, and records them in the <table>_schema_migrations table:
// it is idempotent and safe when several relays start at once.
package schema

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migration is one versioned step of the schema.
type Migration struct {
	Version int
	Name    string
	tmpl    *template.Template
}

// Migrations returns every migration in version order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var ms []Migration
	for _, e := range entries {
		base := strings.TrimSuffix(e.Name(), ".sql")
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration file %q: want NNN_name.sql", e.Name())
		}
		text, err := fs.ReadFile(migrationFS, path.Join("migrations", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read migration %q: %w", e.Name(), err)
		}
		t, err := template.New(e.Name()).Option("missingkey=error").Parse(string(text))
		if err != nil {
			return nil, fmt.Errorf("parse migration %q: %w", e.Name(), err)
		}
		ms = append(ms, Migration{Version: v, Name: name, tmpl: t})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms, nil
}

// LatestVersion is the version of the newest migration this build knows.
// A table recorded at a newer version was migrated by a newer build, whose
// columns this one may not know.
func LatestVersion() int {
	ms, err := Migrations()
	if err != nil || len(ms) == 0 {
		return 0 // the embedded files are checked by the tests
	}
	return ms[len(ms)-1].Version
}

// SQL renders the migration for table t.
func (m Migration) SQL(t Table) (string, error) {
	var buf bytes.Buffer
	if err := m.tmpl.Execute(&buf, newTemplateData(t)); err != nil {
		return "", fmt.Errorf("render migration %03d_%s: %w", m.Version, m.Name, err)
	}
	return buf.String(), nil
}

// templateData is what migration templates see. Every method returns SQL
// that is safe to paste: quoted identifiers, a quoted literal, a dollar-quote
// tag that none of the names contains.
type templateData struct{ t Table }

func newTemplateData(t Table) templateData { return templateData{t: t} }

func (d templateData) Table() string              { return d.t.Ident() }
func (d templateData) Name(suffix string) string  { return d.t.Derived(suffix) }
func (d templateData) Local(suffix string) string { return d.t.Local(suffix) }
func (d templateData) ChannelLiteral() string     { return quoteLiteral(d.t.Channel()) }

// PartitionChannelPrefixLiteral is, as a string literal, what
// Table.PartitionChannel puts before the partition's number.
func (d templateData) PartitionChannelPrefixLiteral() string {
	return quoteLiteral(d.t.partitionChannelPrefix())
}

// NotifySettingLiteral is Table.NotifySetting as a string literal.
func (d templateData) NotifySettingLiteral() string { return quoteLiteral(d.t.NotifySetting()) }

// NotifiedSettingLiteral is the literal name of the transaction setting
// in which the insert trigger keeps what it notified (migration 011).
func (d templateData) NotifiedSettingLiteral() string {
	return quoteLiteral(d.t.Setting("notified"))
}

// NameLiteral is Name as a string literal, for a ::regclass cast.
func (d templateData) NameLiteral(suffix string) string { return quoteLiteral(d.t.Derived(suffix)) }

// Q returns a dollar-quote tag that occurs in neither the schema nor the table
// name, so a name cannot end a function body early.
func (d templateData) Q() string { return d.t.DollarQuote() }

// Applied is one row of the migrations table.
type Applied struct {
	Version   int
	Name      string
	AppliedAt time.Time
}

// Migrate applies every pending migration to table t (which should be
// resolved, see Table.Resolve) and returns the ones it applied. It holds a
// session advisory lock for the table meanwhile, so concurrent callers wait
// and then find nothing left to do. conn must be a session-level connection
// (not through a transaction-mode pooler).
func Migrate(ctx context.Context, conn *pgx.Conn, t Table) ([]Migration, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	key := t.LockKey("migrate")
	if _, err := conn.Exec(ctx, "select pg_advisory_lock($1)", key); err != nil {
		return nil, fmt.Errorf("take migration lock: %w", err)
	}
	defer func() {
		// Unlock even when ctx is done; if the connection is gone the lock is too.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = conn.Exec(uctx, "select pg_advisory_unlock($1)", key)
	}()

	if t.Schema != "" {
		if _, err := conn.Exec(ctx, "create schema if not exists "+pgx.Identifier{t.Schema}.Sanitize()); err != nil {
			return nil, fmt.Errorf("create schema %s: %w", pgx.Identifier{t.Schema}.Sanitize(), err)
		}
	}
	if _, err := conn.Exec(ctx, `create table if not exists `+t.Derived("schema_migrations")+` (
		version    int primary key,
		name       text not null,
		applied_at timestamptz not null default now()
	)`); err != nil {
		return nil, fmt.Errorf("create migrations table: %w", err)
	}
	done, err := AppliedMigrations(ctx, conn, t)
	if err != nil {
		return nil, err
	}
	have := make(map[int]bool, len(done))
	for _, a := range done {
		have[a.Version] = true
	}
	var applied []Migration
	for _, m := range ms {
		if have[m.Version] {
			continue
		}
		sql, err := m.SQL(t)
		if err != nil {
			return applied, err
		}
		if err := applyWaiting(ctx, conn, t, m, sql); err != nil {
			return applied, fmt.Errorf("apply migration %03d_%s: %w", m.Version, m.Name, err)
		}
		applied = append(applied, m)
	}
	return applied, nil
}

// Waiting for the table's lock. A migration that changes the table (a
// trigger, a storage parameter) needs an ACCESS EXCLUSIVE lock, and while
// it waits for one every writer's INSERT queues behind it. A relay that is
// draining always holds a claim open, and its next claim would queue behind
// the migration too: writers could stall until the relay's claim timed out
// (30s). So each attempt waits for the lock at most migrationLockTimeout,
// and gives up after migrationAttempts, a pause between attempts.
const (
	migrationLockTimeout = 2 * time.Second
	migrationAttempts    = 15
	migrationRetryPause  = time.Second

	sqlstateLockNotAvailable = "55P03"
)

// applyWaiting applies one migration in a transaction, retrying when its
// lock on the table cannot be had within migrationLockTimeout.
func applyWaiting(ctx context.Context, conn *pgx.Conn, t Table, m Migration, sql string) error {
	for attempt := 1; ; attempt++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, fmt.Sprintf("set local lock_timeout = %d", migrationLockTimeout.Milliseconds())); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "insert into "+t.Derived("schema_migrations")+" (version, name) values ($1, $2)", m.Version, m.Name)
			return err
		})
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != sqlstateLockNotAvailable {
			return err
		}
		if attempt == migrationAttempts {
			return fmt.Errorf("the table stayed locked by other sessions for %d attempts of %s: %w", attempt, migrationLockTimeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(migrationRetryPause):
		}
	}
}

// AppliedMigrations lists the migrations recorded for table t.
func AppliedMigrations(ctx context.Context, conn interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, t Table) ([]Applied, error) {
	rows, err := conn.Query(ctx, "select version, name, applied_at from "+t.Derived("schema_migrations")+" order by version")
	if err != nil {
		return nil, fmt.Errorf("read applied migrations: %w", err)
	}
	as, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Applied])
	if err != nil {
		return nil, fmt.Errorf("read applied migrations: %w", err)
	}
	return as, nil
}

// RelayWaiting reports whether a relay on table t has recorded that it
// sleeps on LISTEN: the wake-up flag the insert trigger reads (migration
// 002), which the relay sets with setval.
func RelayWaiting(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, t Table) (bool, error) {
	var waiting bool
	if err := q.QueryRow(ctx, "select coalesce(pg_sequence_last_value($1::regclass) = 1, false)", t.Derived("relay_waiting")).Scan(&waiting); err != nil {
		return false, fmt.Errorf("read wake-up flag of %s: %w", t, err)
	}
	return waiting, nil
}
