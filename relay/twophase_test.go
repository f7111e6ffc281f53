package relay_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// Two-phase commit works with the relay idle and busy, on a server of the
// test's own with max_prepared_transactions > 0 (the shared one has 0).
// Idle, a plain transaction cannot be prepared: the trigger notified. One
// that says `set local <table>.notify = off` prepares; once committed
// (COMMIT PREPARED), its event waits until the writer calls <table>_wake()
// (the relay polls once a minute here) and then arrives at once. A
// prepared transaction left open keeps no other writer's event waiting.
// Busy with a backlog, prepared transactions' events arrive with it.
func TestTwoPhaseCommit(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t, "max_prepared_transactions = 10\n")
	e := pg.Env(t)
	ex := e.Exchange(t, "events", "topic")
	recv := e.Consume(t, e.Queue(t, "all", ex, "#"))
	b := &testBundle{env: e, exchange: ex}
	cfg := b.config(t)
	cfg.PollInterval = time.Minute
	start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tp := twoPhase{e: e, ex: ex}
	waitAsleep := func() {
		testenv.WaitFor(t, 10*time.Second, "the relay to sleep on LISTEN", func() bool {
			w, err := schema.RelayWaiting(ctx, e.Pool, e.Table)
			return err == nil && w
		})
	}

	waitAsleep()
	// Having gained its partitions, the relay looks at the group once more
	// shortly after (lookSoon) and claims with it; then it sleeps until
	// PollInterval or a notification.
	time.Sleep(300 * time.Millisecond)
	waitAsleep()
	err := tp.prepare(ctx, "plain", false)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "0A000" {
		t.Fatalf("PREPARE of a transaction that notified: got %v, want feature_not_supported (0A000)", err)
	}

	if err := tp.prepare(ctx, "opted-out", true); err != nil {
		t.Fatalf("PREPARE with %s = off: %v", e.Table.NotifySetting(), err)
	}
	tp.exec(t, ctx, "commit prepared 'opted-out'")
	select {
	case d := <-recv:
		t.Fatalf("%q arrived before %s was called: the relay was to sleep until then", d.RoutingKey, e.Table.Derived("wake"))
	case <-time.After(500 * time.Millisecond):
	}
	woken := time.Now()
	tp.exec(t, ctx, "select "+e.Table.Derived("wake")+"()")
	expectKeys(t, recv, "opted-out")
	t.Logf("published %s after the wake-up call", time.Since(woken).Round(time.Millisecond))

	// A prepared transaction open while the relay goes to sleep keeps
	// other writers' events waiting for nothing.
	if err := tp.prepare(ctx, "left-open", true); err != nil {
		t.Fatal(err)
	}
	waitAsleep()
	insert(t, e.Pool, b, row{exchange: ex, key: "plain-while-prepared", payload: []byte("x")})
	expectKeys(t, recv, "plain-while-prepared")
	tp.exec(t, ctx, "commit prepared 'left-open'")
	tp.exec(t, ctx, "select "+e.Table.Derived("wake")+"()")
	expectKeys(t, recv, "left-open")

	// Busy: a backlog drains while prepared transactions commit.
	const backlog = 20000
	tp.exec(t, ctx, fmt.Sprintf(`insert into %s (exchange, routing_key, payload)
		select $1, 'backlog', 'x' from generate_series(1, %d)`, e.Table.Ident(), backlog), ex)
	for i := range 5 {
		gid := fmt.Sprintf("busy-%d", i)
		if err := tp.prepare(ctx, gid, true); err != nil {
			t.Fatalf("PREPARE while the relay drains: %v", err)
		}
		tp.exec(t, ctx, "commit prepared '"+gid+"'")
		tp.exec(t, ctx, "select "+e.Table.Derived("wake")+"()")
	}
	got := map[string]int{}
	for _, d := range testenv.Receive(t, recv, backlog+5, time.Minute) {
		got[d.RoutingKey]++
	}
	if got["backlog"] != backlog || len(got) != 6 {
		t.Errorf("while busy, received %v; want %d backlog rows and busy-0..4 once each", got, backlog)
	}
	for i := range 5 {
		if k := fmt.Sprintf("busy-%d", i); got[k] != 1 {
			t.Errorf("%s received %d times, want once", k, got[k])
		}
	}
}

// twoPhase writes events in prepared transactions.
type twoPhase struct {
	e  *testenv.Env
	ex string
}

// prepare enqueues an event with routing key gid in a transaction and
// prepares it as gid, first turning the NOTIFY off if optOut.
func (tp twoPhase) prepare(ctx context.Context, gid string, optOut bool) error {
	return pgx.BeginFunc(ctx, tp.e.Pool, func(tx pgx.Tx) error {
		if optOut {
			if _, err := tx.Exec(ctx, "set local "+tp.e.Table.NotifySetting()+" = off"); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, "select "+tp.e.Table.Derived("enqueue")+"($1, $2, 'x'::text)", tp.ex, gid); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "prepare transaction '"+gid+"'")
		return err
	})
}

func (tp twoPhase) exec(t *testing.T, ctx context.Context, sql string, args ...any) {
	t.Helper()
	if _, err := tp.e.Pool.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// expectKeys receives one delivery per key, in any order, within 5s.
func expectKeys(t *testing.T, recv <-chan amqp.Delivery, keys ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	for _, d := range testenv.Receive(t, recv, len(keys), 5*time.Second) {
		if !want[d.RoutingKey] {
			t.Errorf("received %q, want one of %v", d.RoutingKey, keys)
		}
		delete(want, d.RoutingKey)
	}
}
