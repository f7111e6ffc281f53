package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/schema"
)

// The AMQP property columns (migration 005) and the table's schema version.
//
// A relay works against the schema version before its own, so that relays
// can be upgraded before the table: against a table without the property
// columns it claims without them (claimQuery). When `migrate` adds them
// while it runs, it must not publish a row written with properties as if
// it had none. Every claim of such a relay therefore asks, after taking its
// rows and in their transaction, whether the columns exist now. The
// migration needs the table's ACCESS EXCLUSIVE lock, which it cannot have
// while the claim holds its lock on the table: either the migration
// committed before the claim began, and the check sees the columns, or it
// commits after the claim's transaction ends, and every row claimed was
// written without properties. On seeing them the claim is rolled back and
// made again with the columns.
//
// A schema newer than the relay knows may hold columns it would drop: Run
// refuses it (checkSchemaVersion) rather than publish without them.

// errSchemaChanged is a claim given up because migration 005 was applied
// since the relay built its claim; the next claim reads the new columns.
var errSchemaChanged = errors.New("the table gained the AMQP property columns (migration 005): claiming again with them")

// propertiesSQL reports whether the table $1 has the property columns.
const propertiesSQL = `select exists (select 1 from pg_attribute
         where attrelid = $1::regclass and attname = 'app_id' and not attisdropped)`

// setProperties builds the claim for a table with (true) or without the
// property columns.
func (s *pgStore) setProperties(props bool) {
	s.props = props
	s.claimSQL = claimQuery(s.table, props, s.recorded)
}

// queuePropertiesCheck queues, after a claim made without the property
// columns, the check that they still do not exist.
func (s *pgStore) queuePropertiesCheck(b *pgx.Batch) {
	b.Queue(propertiesSQL, s.table.Ident()).QueryRow(func(row pgx.Row) error {
		var props bool
		if err := row.Scan(&props); err != nil {
			return fmt.Errorf("check for property columns: %w", err)
		}
		if props {
			s.setProperties(true)
			return errSchemaChanged
		}
		return nil
	})
}

// SchemaTooNewError is a table whose schema is newer than the relay knows:
// migrations it has never heard of may have added columns it would not
// publish. Upgrade the relay first, then migrate the table.
type SchemaTooNewError struct {
	Table          schema.Table
	Version, Known int
}

func (e *SchemaTooNewError) Error() string {
	return fmt.Sprintf("table %s has schema version %d, newer than this relay knows (%d): upgrade the relay (relays first, then `outbox-relay migrate`)",
		e.Table, e.Version, e.Known)
}

// checkSchema reads the table's schema version and whether it has the
// property columns. A version newer than the relay's migrations is a
// *SchemaTooNewError. A table whose migrations were applied by hand and
// not recorded reads as version 0; one whose migrations table the relay's
// role may not read (before migration 005 granted that to PUBLIC) as -1,
// unknown.
func checkSchema(ctx context.Context, q simpleQuerier, t schema.Table) (version int, props bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	known := schema.LatestVersion()
	err = q.QueryRow(ctx, `select coalesce((select max(version) from `+t.Derived("schema_migrations")+`), 0)`).Scan(&version)
	var pe interface{ SQLState() string }
	if errors.As(err, &pe) {
		switch pe.SQLState() {
		case "42P01": // undefined_table: migrated by hand
			version, err = 0, nil
		case "42501": // insufficient_privilege
			version, err = -1, nil
		}
	}
	if err != nil {
		return 0, false, fmt.Errorf("read schema version of %s: %w", t, err)
	}
	if version > known {
		return version, false, &SchemaTooNewError{Table: t, Version: version, Known: known}
	}
	if err := q.QueryRow(ctx, propertiesSQL, t.Ident()).Scan(&props); err != nil {
		return version, false, fmt.Errorf("check for property columns of %s: %w", t, err)
	}
	return version, props, nil
}

// expiresIn returns how long row r has left before its expiration runs
// out, at now; ok is false when it has no expiration.
func (r *Row) expiresIn(now time.Time) (left time.Duration, ok bool) {
	if r.ExpiresAt.IsZero() {
		return 0, false
	}
	return r.ExpiresAt.Sub(now), true
}
