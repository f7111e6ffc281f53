package relay_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

// An empty routing key is valid on a named exchange: a fanout exchange
// ignores it, and clients such as python-socketio's KombuManager send ”.
// Written by outbox_enqueue (positional and named arguments) and by Go's
// Enqueue, each arrives at the queue bound to the fanout exchange with an
// empty routing key. On the default exchange, which routes by queue name,
// ” is refused at insert, naming the check, and by Enqueue.
func TestEmptyRoutingKeyRoutesToFanout(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	fan := e.Exchange(t, "fan", "fanout")
	recv := e.Consume(t, e.Queue(t, "fan", fan, ""))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	enqueue := e.Table.Derived("enqueue")
	if _, err := e.Pool.Exec(ctx, `select `+enqueue+`($1, '', 'positional'::text)`, fan); err != nil {
		t.Fatalf("outbox_enqueue with '': %v", err)
	}
	if _, err := e.Pool.Exec(ctx, `select `+enqueue+`(exchange => $1, routing_key => '', payload => 'named'::text)`, fan); err != nil {
		t.Fatalf("outbox_enqueue(routing_key => ''): %v", err)
	}
	w, err := outbox.NewWriter(e.Table.Ident())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Enqueue(ctx, e.Pool, outbox.Message{Exchange: fan, Payload: []byte("go")}); err != nil {
		t.Fatalf("Enqueue with an empty routing key on %s: %v", fan, err)
	}

	_, err = e.Pool.Exec(ctx, `select `+enqueue+`('', '', 'nowhere'::text)`)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.ConstraintName != e.Table.Name+"_routable" {
		t.Errorf("'' on the default exchange: got %v, want a violation of %s", err, e.Table.Name+"_routable")
	}
	if _, err := w.Enqueue(ctx, e.Pool, outbox.Message{Payload: []byte("nowhere")}); !errors.Is(err, outbox.ErrEmptyRoutingKey) {
		t.Errorf("Enqueue of '' on the default exchange: got %v, want ErrEmptyRoutingKey", err)
	}

	b := &testBundle{env: e}
	start(t, b.config(t))
	got := map[string]bool{}
	for _, d := range testenv.Receive(t, recv, 3, 10*time.Second) {
		if d.Exchange != fan || d.RoutingKey != "" {
			t.Errorf("%q arrived from exchange %q with routing key %q, want %q and ''", d.Body, d.Exchange, d.RoutingKey, fan)
		}
		got[string(d.Body)] = true
	}
	for _, want := range []string{"positional", "named", "go"} {
		if !got[want] {
			t.Errorf("%q did not arrive; got %v", want, got)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "table to be empty", func() bool {
		live, dead := e.Pending(t)
		return live == 0 && dead == 0
	})
}

// Upgrading a table refusing ” (migration 008) to the latest lets rows
// with an empty routing key in, and keeps refusing it on the default
// exchange; the new check is validated.
func TestUpgradeAcceptsEmptyRoutingKey(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	e.MigrateTo(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ins := `insert into ` + e.Table.Ident() + ` (exchange, routing_key, payload) values ($1, '', 'x')`
	_, err := e.Pool.Exec(ctx, ins, "fan")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.ConstraintName != e.Table.Name+"_routing_key_set" {
		t.Fatalf("before the upgrade: got %v, want a violation of %s", err, e.Table.Name+"_routing_key_set")
	}
	if _, err := schema.Migrate(ctx, testenv.Conn(t), e.Table); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if _, err := e.Pool.Exec(ctx, ins, "fan"); err != nil {
		t.Errorf("after the upgrade, '' on a named exchange: %v", err)
	}
	if _, err := e.Pool.Exec(ctx, ins, ""); !errors.As(err, &pe) || pe.ConstraintName != e.Table.Name+"_routable" {
		t.Errorf("after the upgrade, '' on the default exchange: got %v, want a violation of %s", err, e.Table.Name+"_routable")
	}
	var valid bool
	if err := e.Pool.QueryRow(ctx, `select convalidated from pg_constraint where conrelid = $1::regclass and conname = $2`,
		e.Table.Ident(), e.Table.Name+"_routable").Scan(&valid); err != nil || !valid {
		t.Errorf("check %s validated = %v (%v), want true", e.Table.Name+"_routable", valid, err)
	}
}

// With MandatoryExcept naming a fanout exchange, its events leave the
// table once every queue bound to it is gone (every Socket.IO instance
// restarting at once): dropped by the broker, never retried or parked.
// Other exchanges keep the mandatory flag: an event no queue takes there
// still goes dead.
func TestMandatoryExceptDropsFanoutWithNoQueue(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	fan := e.Exchange(t, "sock", "fanout")
	unrouted := e.Exchange(t, "unrouted", "direct") // no queue bound
	q := e.Queue(t, "sock", fan, "")
	recv := e.Consume(t, q)
	b := &testBundle{env: e}
	cfg := b.config(t)
	cfg.MaxAttempts = 2
	cfg.MandatoryExcept = []string{"unrelated", e.Name + ".so*"}
	start(t, cfg)

	insert(t, e.Pool, b, row{exchange: fan, payload: []byte("heard")})
	testenv.Receive(t, recv, 1, 10*time.Second)
	if _, err := e.Channel(t).QueueDelete(q, false, false, false); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		insert(t, e.Pool, b, row{exchange: fan, payload: []byte("nobody listens")})
	}
	insert(t, e.Pool, b, row{exchange: unrouted, key: "nobody", payload: []byte("must be heard")})
	testenv.WaitFor(t, 10*time.Second, "the unroutable direct row to be dead", func() bool {
		_, dead := e.Pending(t)
		return dead >= 1
	})
	testenv.WaitFor(t, 10*time.Second, "the fanout rows to leave the table", func() bool {
		live, _ := e.Pending(t)
		return live == 0
	})
	var deadFan int
	if err := e.Pool.QueryRow(context.Background(), `select count(*) from `+e.Table.Ident()+
		` where dead_at is not null and exchange = $1`, fan).Scan(&deadFan); err != nil {
		t.Fatal(err)
	}
	if _, dead := e.Pending(t); deadFan != 0 || dead != 1 {
		t.Errorf("dead rows: %d of the fanout exchange, %d in all; want 0 and 1 (the direct exchange's)", deadFan, dead)
	}
}
