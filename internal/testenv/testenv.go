// Package testenv gives integration tests their own corner of the real
// PostgreSQL and RabbitMQ servers: a fresh schema holding a migrated outbox
// table, and exchange and queue names nobody else uses. Everything is removed
// in t.Cleanup, so packages run in parallel and leave nothing behind.
//
// OUTBOX_TEST_DATABASE_URL and OUTBOX_TEST_AMQP_URL point it at other
// servers; by default it uses the local ones on 127.0.0.1. A server that does
// not answer fails the test with a hint; it is never skipped.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/schema"
)

// Defaults for the local servers the README and .ci/run set up.
const (
	DatabaseURLDefault = "postgres://postgres@127.0.0.1:5432/test"
	AMQPURLDefault     = "amqp://guest:guest@127.0.0.1:5672/"
)

// DatabaseURL is the PostgreSQL server tests use.
func DatabaseURL() string { return envOr("OUTBOX_TEST_DATABASE_URL", DatabaseURLDefault) }

// AMQPURL is the RabbitMQ server tests use.
func AMQPURL() string { return envOr("OUTBOX_TEST_AMQP_URL", AMQPURLDefault) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Env is one test's isolated environment.
type Env struct {
	// Name is unique to this test and usable as a schema, exchange or queue
	// name (lower case letters, digits, underscores).
	Name string
	// URL is the PostgreSQL URL of the test's database: DatabaseURL(), or
	// the database of its own made by WithDatabase.
	URL string
	// Table is the test's migrated outbox table, schema-qualified.
	Table schema.Table
	// Pool is connected to DatabaseURL.
	Pool *pgxpool.Pool
	// AMQP is a connection of the test's own, named after the test.
	AMQP *amqp.Connection
}

// Option changes what New sets up.
type Option func(*options)

type options struct {
	table   string
	migrate bool
	ownDB   bool
}

// WithDatabase gives the test a database of its own (named like the
// schema, dropped in t.Cleanup), for tests that change database-wide
// settings.
func WithDatabase() Option { return func(o *options) { o.ownDB = true } }

// WithTable names the table inside the test's schema (default "outbox").
func WithTable(name string) Option { return func(o *options) { o.table = name } }

// WithoutMigrate leaves the schema empty.
func WithoutMigrate() Option { return func(o *options) { o.migrate = false } }

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// UniqueName returns a name derived from the test's name plus random
// letters, short enough for a PostgreSQL identifier.
func UniqueName(t testing.TB) string {
	base := nonIdent.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(base) > 40 {
		base = base[:40]
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "t_" + strings.Trim(base, "_") + "_" + hex.EncodeToString(b)
}

// New creates the test's schema, migrates an outbox table in it and opens
// connections to both servers.
func New(t testing.TB, opts ...Option) *Env {
	t.Helper()
	o := options{table: schema.TableDefault, migrate: true}
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	e := &Env{Name: UniqueName(t), URL: DatabaseURL()}
	e.Table = schema.Table{Schema: e.Name, Name: o.table}
	if o.ownDB {
		e.URL = createDatabase(t, e.Name)
	}
	e.Pool = PoolAt(t, e.URL)
	if _, err := e.Pool.Exec(ctx, "create schema "+pgx.Identifier{e.Name}.Sanitize()); err != nil {
		t.Fatalf("create test schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := e.Pool.Exec(ctx, "drop schema "+pgx.Identifier{e.Name}.Sanitize()+" cascade"); err != nil {
			t.Errorf("drop test schema: %v", err)
		}
	})
	if o.migrate {
		conn := ConnAt(t, e.URL)
		if _, err := schema.Migrate(ctx, conn, e.Table); err != nil {
			t.Fatalf("migrate test table: %v", err)
		}
	}
	e.AMQP = AMQPConn(t, e.Name)
	return e
}

// Pool returns a pool on the test database, closed in t.Cleanup.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return PoolAt(t, DatabaseURL())
}

// PoolAt returns a pool on the database at url, closed in t.Cleanup.
func PoolAt(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, url)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		t.Fatalf("PostgreSQL at OUTBOX_TEST_DATABASE_URL (default %s) does not answer: %v\n"+
			"hint: start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or run `bash .ci/run`", DatabaseURLDefault, err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Conn returns a single session-level connection, closed in t.Cleanup.
func Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	return ConnAt(t, DatabaseURL())
}

// ConnAt returns a session-level connection to the database at url,
// closed in t.Cleanup.
func ConnAt(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("PostgreSQL at OUTBOX_TEST_DATABASE_URL does not answer: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// AMQPConn opens a RabbitMQ connection whose client-provided name is name, so
// that a fault test can find and close exactly this connection.
func AMQPConn(t testing.TB, name string) *amqp.Connection {
	t.Helper()
	cfg := amqp.Config{Properties: amqp.NewConnectionProperties()}
	cfg.Properties.SetClientConnectionName(name)
	conn, err := amqp.DialConfig(AMQPURL(), cfg)
	if err != nil {
		t.Fatalf("RabbitMQ at OUTBOX_TEST_AMQP_URL (default %s) does not answer: %v\n"+
			"hint: start it with `rabbitmq-server -detached`, or run `bash .ci/run`", redact(AMQPURLDefault), err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func redact(u string) string {
	if uri, err := amqp.ParseURI(u); err == nil {
		uri.Password = ""
		return uri.String()
	}
	return "(unparsable URL)"
}

// Channel opens a channel on e.AMQP, closed in t.Cleanup.
func (e *Env) Channel(t testing.TB) *amqp.Channel {
	t.Helper()
	ch, err := e.AMQP.Channel()
	if err != nil {
		t.Fatalf("open AMQP channel: %v", err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	return ch
}

// Exchange declares an auto-deleted exchange of the given kind named after
// the test plus suffix, deleted in t.Cleanup.
func (e *Env) Exchange(t testing.TB, suffix, kind string) string {
	t.Helper()
	name := e.Name + "." + suffix
	ch := e.Channel(t)
	if err := ch.ExchangeDeclare(name, kind, false, false, false, false, nil); err != nil {
		t.Fatalf("declare exchange %s: %v", name, err)
	}
	t.Cleanup(func() {
		if ch, err := e.AMQP.Channel(); err == nil {
			_ = ch.ExchangeDelete(name, false, false)
			_ = ch.Close()
		}
	})
	return name
}

// Queue declares a durable queue named after the test plus suffix, bound to
// exchange with key when exchange is not empty, and deleted in t.Cleanup.
func (e *Env) Queue(t testing.TB, suffix, exchange, key string) string {
	t.Helper()
	name := e.Name + "." + suffix
	ch := e.Channel(t)
	if _, err := ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
		t.Fatalf("declare queue %s: %v", name, err)
	}
	t.Cleanup(func() {
		if ch, err := e.AMQP.Channel(); err == nil {
			_, _ = ch.QueueDelete(name, false, false, false)
			_ = ch.Close()
		}
	})
	if exchange != "" {
		if err := ch.QueueBind(name, key, exchange, false, nil); err != nil {
			t.Fatalf("bind queue %s to %s: %v", name, exchange, err)
		}
	}
	return name
}

// Consume starts consuming queue with auto-ack on a channel of its own and
// returns the deliveries; consumption stops in t.Cleanup.
func (e *Env) Consume(t testing.TB, queue string) <-chan amqp.Delivery {
	t.Helper()
	ch := e.Channel(t)
	d, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume %s: %v", queue, err)
	}
	return d
}

// Receive waits for n deliveries, failing the test if they do not all come
// before timeout.
func Receive(t testing.TB, d <-chan amqp.Delivery, n int, timeout time.Duration) []amqp.Delivery {
	t.Helper()
	out := make([]amqp.Delivery, 0, n)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for len(out) < n {
		select {
		case m, ok := <-d:
			if !ok {
				t.Fatalf("delivery channel closed after %d of %d messages", len(out), n)
			}
			out = append(out, m)
		case <-deadline.C:
			t.Fatalf("received %d of %d messages within %s", len(out), n, timeout)
		}
	}
	return out
}

// SQL puts the test's table (quoted) in place of {{t}} in sql.
func (e *Env) SQL(sql string) string {
	return strings.ReplaceAll(sql, "{{t}}", e.Table.Ident())
}

// Exec runs sql, with {{t}} standing for the test's table (see SQL), on
// the test's pool, and fails the test if it fails.
func (e *Env) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := e.Pool.Exec(context.Background(), e.SQL(sql), args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Pending counts the rows left in the test's table, dead or not.
func (e *Env) Pending(t testing.TB) (live, dead int) {
	t.Helper()
	err := e.Pool.QueryRow(context.Background(),
		"select count(*) filter (where dead_at is null), count(*) filter (where dead_at is not null) from "+e.Table.Ident()).
		Scan(&live, &dead)
	if err != nil {
		t.Fatalf("count rows: %v", err)
	}
	return live, dead
}

// WaitFor polls cond every 10ms until it is true, failing the test with what
// after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitRelayIdle waits until a relay on the test's table has recorded that
// it sleeps on LISTEN (the wake-up flag the insert trigger reads).
func (e *Env) WaitRelayIdle(t testing.TB) {
	t.Helper()
	WaitFor(t, 10*time.Second, "relay to wait for notifications", func() bool {
		waiting, err := schema.RelayWaiting(context.Background(), e.Pool, e.Table)
		return err == nil && waiting
	})
}
