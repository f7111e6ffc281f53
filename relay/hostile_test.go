package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// setupOwnDB is setup with a database of the test's own, whose settings
// the test may change.
func setupOwnDB(t *testing.T) *testBundle {
	t.Helper()
	e := testenv.New(t, testenv.WithDatabase())
	ex := e.Exchange(t, "events", "topic")
	q := e.Queue(t, "all", ex, "#")
	return &testBundle{env: e, exchange: ex, queue: q, recv: e.Consume(t, q)}
}

// alterDatabase sets (or with value "", resets) a setting of the test's
// database, for sessions opened from now on.
func (b *testBundle) alterDatabase(t *testing.T, name, value string) {
	t.Helper()
	db := pgx.Identifier{b.env.Name}.Sanitize()
	sql := "alter database " + db + " reset " + name
	if value != "" {
		sql = fmt.Sprintf("alter database %s set %s = '%s'", db, name, value)
	}
	if _, err := b.env.Pool.Exec(context.Background(), sql); err != nil {
		t.Fatal(err)
	}
}

// logged returns a logger for the test's relay whose lines go to t.Log and
// to the returned buffer.
func (b *testBundle) logged(t *testing.T) (*testenv.Buffer, *slog.Logger) {
	return testenv.BufferedLogger(t)
}

// insertBacklog commits n rows in one statement and returns nothing: the
// consumer counts them by message_id.
func (b *testBundle) insertBacklog(t *testing.T, n int) {
	t.Helper()
	_, err := b.env.Pool.Exec(context.Background(), `insert into `+b.env.Table.Ident()+` (exchange, routing_key, payload)
		select $1, 'k.' || i, convert_to(repeat('x', 200), 'UTF8') from generate_series(1, $2) i`, b.exchange, n)
	if err != nil {
		t.Fatal(err)
	}
}

// receiveAll waits for n distinct message ids and returns how many
// deliveries repeated one.
func (b *testBundle) receiveAll(t *testing.T, n int, timeout time.Duration) (duplicates int) {
	t.Helper()
	seen := map[string]bool{}
	deadline := time.After(timeout)
	for len(seen) < n {
		select {
		case d := <-b.recv:
			if seen[d.MessageId] {
				duplicates++
			}
			seen[d.MessageId] = true
		case <-deadline:
			t.Fatalf("received %d of %d messages within %s", len(seen), n, timeout)
		}
	}
	return duplicates
}

// A database whose defaults would kill the relay's transactions and
// statements (teams set such timeouts; a slow broker makes seconds as bad
// as milliseconds): the relay sets its own for its sessions, and a backlog
// drains with no failed batch and no duplicate.
func TestRelayOutlastsHostileSessionDefaults(t *testing.T) {
	t.Parallel()
	b := setupOwnDB(t)
	const n = 20_000
	b.insertBacklog(t, n)
	for name, v := range map[string]string{
		"idle_in_transaction_session_timeout": "10ms",
		"statement_timeout":                   "5ms",
		"lock_timeout":                        "1ms",
		"idle_session_timeout":                "50ms",
		"default_transaction_isolation":       "serializable",
	} {
		b.alterDatabase(t, name, v)
	}
	buf, log := b.logged(t)
	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.Logger, cfg.Registerer = log, reg
	start(t, cfg)

	// Under load (the race detector, packages in parallel) the listener's
	// first statements can outlast the database's 5ms statement_timeout
	// and 50ms idle_session_timeout, which apply until the session is
	// proven the relay's own and gets its settings: the relay retries with
	// back-off (up to 10s apart) until one attempt gets through.
	if dup := b.receiveAll(t, n, 120*time.Second); dup != 0 {
		t.Errorf("%d duplicates", dup)
	}
	if strings.Contains(buf.String(), "batch failed") {
		t.Errorf("a batch failed under hostile defaults")
	}
	for _, reason := range []string{"timeout", "channel_closed"} {
		if v := value(gather(t, reg)["outbox_publish_failures_total"], "reason", reason); v != 0 {
			t.Errorf("outbox_publish_failures_total{reason=%q} = %v", reason, v)
		}
	}
}

// A read-only database: the relay says so and what to do, publishes
// nothing, and resumes once the database accepts writes.
func TestRelayWaitsForWritableDatabase(t *testing.T) {
	t.Parallel()
	b := setupOwnDB(t)
	b.insertBacklog(t, 10)
	b.alterDatabase(t, "default_transaction_read_only", "on")
	buf, log := b.logged(t)
	cfg := b.config(t)
	cfg.Logger = log
	start(t, cfg)

	testenv.WaitFor(t, 15*time.Second, "the read-only error", func() bool {
		return strings.Contains(buf.String(), "reason=read_only")
	})
	for _, want := range []string{"relay cannot lead", "the database is read-only", "target_session_attrs=read-write"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
	select {
	case d := <-b.recv:
		t.Fatalf("published %s from a read-only database", d.MessageId)
	case <-time.After(notificationLeeway):
	}
	if n := strings.Count(buf.String(), "relay cannot lead"); n != 1 {
		t.Errorf("the error was logged %d times, want once per streak", n)
	}

	b.alterDatabase(t, "default_transaction_read_only", "")
	if dup := b.receiveAll(t, 10, 30*time.Second); dup != 0 {
		t.Errorf("%d duplicates", dup)
	}
}

// stallLeeway outlasts the stall bound (10s) and one gauge refresh: long
// enough for a false stall report to show.
const stallLeeway = 12 * time.Second

// An idle leader reports no stall.
func TestRelayIdleLeaderReportsNoStall(t *testing.T) {
	t.Parallel()
	b := setup(t)
	buf, log := b.logged(t)
	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.Logger, cfg.Registerer = log, reg
	start(t, cfg)
	b.env.WaitRelayIdle(t)
	time.Sleep(stallLeeway)
	if strings.Contains(buf.String(), "leader claims no rows") || value(gather(t, reg)["outbox_stalled"]) != 0 {
		t.Fatal("an idle leader reported a stall")
	}
}

// A leader that cannot claim rows which are available (here: another
// session holds their row locks, as a deposed leader's batch would) says
// so in its log and in outbox_stalled, and clears it once it claims again.
func TestRelayWarnsWhenLeaderClaimsNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	// Rows written a minute ago, committed, then locked by another session
	// before any relay runs.
	if _, err := b.env.Pool.Exec(ctx, `insert into `+b.env.Table.Ident()+` (exchange, routing_key, payload, created_at, available_at)
		select $1, 'stuck', '\x00', now() - interval '1 minute', now() - interval '1 minute' from generate_series(1, 3)`, b.exchange); err != nil {
		t.Fatal(err)
	}
	tx, err := b.env.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "select id from "+b.env.Table.Ident()+" for update"); err != nil {
		t.Fatal(err)
	}

	buf, log := b.logged(t)
	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.Logger, cfg.Registerer = log, reg
	start(t, cfg)
	testenv.WaitFor(t, 60*time.Second, "outbox_stalled", func() bool {
		return value(gather(t, reg)["outbox_stalled"]) == 1
	})
	for _, want := range []string{"leader claims no rows although rows are available", "leader_lock_pid=", "last_claim_rows=0"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Receive(t, b.recv, 3, 10*time.Second)
	testenv.WaitFor(t, 30*time.Second, "outbox_stalled to clear", func() bool {
		return value(gather(t, reg)["outbox_stalled"]) == 0
	})
}
