package schema_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// sizeLimit is one of migration 003's checks.
type sizeLimit struct {
	column     string
	constraint string // without the table's name
	max        int    // bytes
	allows     string // how migration 004's last_error states the limit
}

// limits are migration 003's checks: the columns AMQP carries as short
// strings, and partition_key, which must fit its index.
var limits = []sizeLimit{
	{"exchange", "exchange_size", 255, "AMQP allows 255"},
	{"routing_key", "routing_key_size", 255, "AMQP allows 255"},
	{"content_type", "content_type_size", 255, "AMQP allows 255"},
	{"partition_key", "partkey_size", schema.MaxPartitionKey, fmt.Sprintf("the table allows %d", schema.MaxPartitionKey)},
}

// sized returns n bytes of unit, padded with 'a' in front when n is not a
// multiple of its length.
func sized(unit string, n int) string {
	return strings.Repeat("a", n%len(unit)) + strings.Repeat(unit, n/len(unit))
}

// atLimit and overLimit are values of n and n+1 bytes: ASCII, two-byte and
// four-byte runes. Bytes count, not characters.
func atLimit(n int) []string { return []string{sized("k", n), sized("é", n), sized("😀", n)} }
func overLimit(n int) []string {
	return []string{sized("k", n+1), sized("é", n+1), sized("😀", n+1)}
}

// insertRow inserts a live row with col set to v and returns its id.
func insertRow(ctx context.Context, e *testenv.Env, col, v string) (int64, error) {
	return insert(ctx, e, col, v, false)
}

// insert inserts a row with col set to v, parked dead if dead, and returns
// its id.
func insert(ctx context.Context, e *testenv.Env, col, v string, dead bool) (int64, error) {
	vals := map[string]any{"exchange": "", "routing_key": "k", "content_type": nil, "partition_key": nil}
	vals[col] = v
	var id int64
	err := e.Pool.QueryRow(ctx, `insert into `+e.Table.Ident()+` (exchange, routing_key, content_type, partition_key, payload, dead_at)
		values ($1, $2, $3, $4, 'x', case when $5 then now() end) returning id`,
		vals["exchange"], vals["routing_key"], vals["content_type"], vals["partition_key"], dead).Scan(&id)
	return id, err
}

// wantViolation checks that err is a check violation of constraint name.
func wantViolation(t *testing.T, what string, err error, name string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23514" || pe.ConstraintName != name {
		t.Errorf("%s: error %v; want a check violation of %s", what, err, name)
	}
}

func TestLimitsRefuseOversizedValues(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	enqueue := map[string]string{
		"bytea": "select " + e.Table.Derived("enqueue") + "($1::text, $2::text, 'x'::bytea, null, $3::text, $4::text)",
		"text":  "select " + e.Table.Derived("enqueue") + "($1::text, $2::text, 'x'::text, null, $3::text, $4::text)",
		"jsonb": "select " + e.Table.Derived("enqueue") + "($1::text, $2::text, '{}'::jsonb, null, $3::text, $4::text)",
	}
	for _, l := range limits {
		constraint := e.Table.Name + "_" + l.constraint
		args := func(v string) []any {
			a := map[string]any{"exchange": "", "routing_key": "k", "partition_key": "pk", "content_type": "text/plain"}
			a[l.column] = v
			return []any{a["exchange"], a["routing_key"], a["partition_key"], a["content_type"]}
		}
		at, over := atLimit(l.max), overLimit(l.max)
		for i := range at {
			if _, err := insertRow(ctx, e, l.column, at[i]); err != nil {
				t.Errorf("insert %s of %d characters, %d bytes: %v", l.column, len([]rune(at[i])), l.max, err)
			}
			_, err := insertRow(ctx, e, l.column, over[i])
			wantViolation(t, fmt.Sprintf("insert %s of %d bytes", l.column, len(over[i])), err, constraint)
			for form, sql := range enqueue {
				if _, err := e.Pool.Exec(ctx, sql, args(at[i])...); err != nil {
					t.Errorf("enqueue (%s) %s of %d bytes: %v", form, l.column, l.max, err)
				}
				_, err := e.Pool.Exec(ctx, sql, args(over[i])...)
				wantViolation(t, fmt.Sprintf("enqueue (%s) %s of %d bytes", form, l.column, len(over[i])), err, constraint)
			}
		}
	}

	// Dead rows are exempt, until someone retries one.
	for _, l := range limits {
		id, err := insert(ctx, e, l.column, overLimit(l.max)[0], true)
		if err != nil {
			t.Fatalf("insert a dead row over the %s limit: %v", l.column, err)
		}
		_, err = e.Pool.Exec(ctx, "update "+e.Table.Ident()+" set dead_at = null, attempts = 0 where id = $1", id)
		wantViolation(t, "retry of a dead row over the "+l.column+" limit", err, e.Table.Name+"_"+l.constraint)
	}
}

// The constraints' names fit PostgreSQL's 63 bytes beside the longest
// table name OUTBOX_TABLE allows, so errors name them in full.
func TestLimitNamesFitLongestTableName(t *testing.T) {
	t.Parallel()
	name := strings.Repeat("t", 45)
	if _, err := schema.ParseTable(name); err != nil {
		t.Fatalf("%s is no longer the longest table name: %v", name, err)
	}
	e := testenv.New(t, testenv.WithTable(name))
	for _, l := range limits {
		if n := len(name) + 1 + len(l.constraint); n > 63 {
			t.Errorf("%s_%s is %d bytes; PostgreSQL keeps 63", name, l.constraint, n)
		}
		_, err := insertRow(context.Background(), e, l.column, overLimit(l.max)[0])
		wantViolation(t, l.column, err, name+"_"+l.constraint)
	}
}

func TestLimitsParkRowsThatPredateThem(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	ctx := context.Background()
	e.MigrateTo(t, 2)

	type want struct {
		dead    bool
		lastErr *string
	}
	str := func(s string) *string { return &s }
	rows := map[int64]want{}
	add := func(col, v string, w want) {
		t.Helper()
		id, err := insertRow(ctx, e, col, v)
		if err != nil {
			t.Fatalf("insert %s of %d bytes before migration 003: %v", col, len(v), err)
		}
		rows[id] = w
	}
	for _, l := range limits {
		at, over := atLimit(l.max), overLimit(l.max)
		for i := range at {
			add(l.column, at[i], want{})
			add(l.column, over[i], want{dead: true, lastErr: str(fmt.Sprintf("%s is %d bytes; %s (parked by migration 004)", l.column, l.max+1, l.allows))})
		}
		add(l.column, strings.Repeat("x", 65536), want{dead: true, lastErr: str(l.column + " is 65536 bytes; " + l.allows + " (parked by migration 004)")})
	}
	// A partition key that does not compress: it could not have entered
	// partition_idx, but the row was live and could fail.
	add("partition_key", incompressible(3000), want{dead: true, lastErr: str("partition_key is 3000 bytes; the table allows 1024 (parked by migration 004)")})
	var id int64
	// Over every limit at once.
	if err := e.Pool.QueryRow(ctx, "insert into "+e.Table.Ident()+" (exchange, routing_key, content_type, partition_key, payload) values ($1, $1, $1, $2, 'x') returning id",
		strings.Repeat("x", 300), strings.Repeat("x", 1025)).Scan(&id); err != nil {
		t.Fatal(err)
	}
	rows[id] = want{dead: true, lastErr: str("exchange is 300 bytes; routing_key is 300 bytes; content_type is 300 bytes; AMQP allows 255; " +
		"partition_key is 1025 bytes; the table allows 1024 (parked by migration 004)")}
	// Dead already: left as it was.
	if err := e.Pool.QueryRow(ctx, "insert into "+e.Table.Ident()+" (routing_key, payload, attempts, last_error, dead_at) values ($1, 'x', 10, 'nack', '2020-01-01') returning id",
		strings.Repeat("x", 300)).Scan(&id); err != nil {
		t.Fatal(err)
	}
	rows[id] = want{dead: true, lastErr: str("nack")}

	applied, err := schema.Migrate(ctx, testenv.Conn(t), e.Table)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if len(applied) < 2 || applied[0].Version != 3 || applied[1].Version != 4 {
		t.Errorf("applied %v, want 003 and 004 first", applied)
	}
	for id, w := range rows {
		var dead bool
		var lastErr *string
		var attempts int
		err := e.Pool.QueryRow(ctx, "select dead_at is not null, last_error, attempts from "+e.Table.Ident()+" where id = $1", id).Scan(&dead, &lastErr, &attempts)
		if err != nil {
			t.Fatalf("row %d: %v", id, err)
		}
		if dead != w.dead || (lastErr == nil) != (w.lastErr == nil) || (lastErr != nil && *lastErr != *w.lastErr) {
			t.Errorf("row %d: dead %t, last_error %v; want dead %t, last_error %v", id, dead, deref(lastErr), w.dead, deref(w.lastErr))
		}
		if !w.dead && attempts != 0 {
			t.Errorf("row %d: attempts %d, want 0", id, attempts)
		}
	}
	var notValid []string
	if err := e.Pool.QueryRow(ctx, "select coalesce(array_agg(conname::text), '{}') from pg_constraint where conrelid = $1::regclass and contype = 'c' and not convalidated",
		e.Table.Ident()).Scan(&notValid); err != nil {
		t.Fatal(err)
	}
	if len(notValid) > 0 {
		t.Errorf("constraints not validated: %v", notValid)
	}
	if applied, err := schema.Migrate(ctx, testenv.Conn(t), e.Table); err != nil || len(applied) != 0 {
		t.Errorf("second migrate applied %v, %v; want nothing", applied, err)
	}
}

func deref(s *string) string {
	if s == nil {
		return "<null>"
	}
	return *s
}

// Migrations 003 and 004 wait for a relay's claim on a row they park only
// briefly at a time, and writers get through meanwhile.
func TestLimitsMigrationWaitsForClaimWithoutStallingWriters(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	ctx := context.Background()
	e.MigrateTo(t, 2)
	bad, err := insertRow(ctx, e, "routing_key", overLimit(255)[0])
	if err != nil {
		t.Fatal(err)
	}
	migrateBehindClaim(t, e)
	var dead bool
	if err := e.Pool.QueryRow(ctx, "select dead_at is not null from "+e.Table.Ident()+" where id = $1", bad).Scan(&dead); err != nil || !dead {
		t.Errorf("row over the limit: dead %t, %v; want parked", dead, err)
	}
}

// Each check's comment says in words what a row that breaks it has wrong:
// `dead retry` reports it for the rows it skips.
func TestLimitsSayWhatIsWrong(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	for _, l := range limits {
		var comment *string
		if err := e.Pool.QueryRow(context.Background(), `select obj_description(oid, 'pg_constraint') from pg_constraint
			where conrelid = $1::regclass and conname = $2`, e.Table.Ident(), e.Table.Name+"_"+l.constraint).Scan(&comment); err != nil {
			t.Fatalf("%s: %v", l.constraint, err)
		}
		if want := fmt.Sprintf("%s longer than %d bytes", l.column, l.max); comment == nil || *comment != want {
			t.Errorf("%s: comment %v, want %q", l.constraint, deref(comment), want)
		}
	}
}
