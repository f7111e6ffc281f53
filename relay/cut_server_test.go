package relay

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// stallingStore is the real store whose claims come back after a stall:
// stall runs on each claim once it has locked its rows.
type stallingStore struct {
	*pgStore
	stall func(c *claim)
}

func (s *stallingStore) Claim(ctx context.Context, limit int) (*claim, error) {
	c, err := s.pgStore.Claim(ctx, limit)
	if s.stall != nil && c != nil {
		s.stall(c)
	}
	return c, err
}

// awakeClock is the wall clock, without sleeps: the loop's back-off
// passes at once.
type awakeClock struct{}

func (awakeClock) Now() time.Time                                  { return time.Now() }
func (awakeClock) Sleep(ctx context.Context, _ time.Duration) bool { return ctx.Err() == nil }

// Against the servers: a claim stalled past the claim age bound before it
// is sent publishes nothing and releases its rows; the next claim takes
// them and each arrives once, in order.
func TestClaimStalledPastBoundIsNotPublished(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ex := e.Exchange(t, "events", "topic")
	recv := e.Consume(t, e.Queue(t, "all", ex, "#"))
	ctx := context.Background()
	if _, err := e.Pool.Exec(ctx, `insert into `+e.Table.Ident()+` (exchange, routing_key, partition_key, payload)
		select $1, 'r.' || i, 'k' || (i % 2), '\x00' from generate_series(1, 6) i`, ex); err != nil {
		t.Fatal(err)
	}
	// The leader lock, held by a session of the test's own.
	pid, _ := lockSession(t, e.Table)
	uri, err := amqp.ParseURI(testenv.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	logs, logger := testenv.BufferedLogger(t)
	cfg := Config{Logger: logger}.withDefaults()
	pub := newPublisher(cfg, []amqp.URI{uri}, t.Name())
	t.Cleanup(pub.Close)
	st := &stallingStore{pgStore: newStore(e.Pool, e.Table, 10, func(int) time.Duration { return time.Hour })}
	r := &Relay{cfg: cfg, log: logger, metrics: newMetrics(prometheus.NewRegistry()), claimAgeMax: 5 * time.Second}
	l := &loop{Relay: r, store: st, pub: pub, lis: &fakeListener{j: &journal{}, connected: true, pid: pid, lead: true},
		clock: awakeClock{}, vac: newVacuumer(nil, "outbox", 0, logger), prog: &progress{}, channel: "outbox",
		idle: make(chan struct{}, 1), resetPool: func() {}}

	// The claim's round trip took longer than the bound, as if the
	// relay had been cut off from the database meanwhile.
	st.stall = func(c *claim) { c.at = c.at.Add(-r.claimAgeMax - time.Millisecond) }
	if got := l.runOnce(ctx, ctx); got != stepFailed {
		t.Fatalf("stalled claim: step %q, want %q; logs:\n%s", got, stepFailed, logs)
	}
	if live, _ := e.Pending(t); live != 6 {
		t.Fatalf("%d rows pending after the abandoned claim, want 6", live)
	}
	st.stall = nil
	if got := l.runOnce(ctx, ctx); got == stepFailed {
		t.Fatalf("fresh claim failed; logs:\n%s", logs)
	}
	var keys []string
	for len(keys) < 6 {
		select {
		case d := <-recv:
			keys = append(keys, d.RoutingKey)
		case <-time.After(10 * time.Second):
			t.Fatalf("received %v, want 6 messages", keys)
		}
	}
	if want := []string{"r.1", "r.2", "r.3", "r.4", "r.5", "r.6"}; !slices.Equal(keys, want) {
		t.Errorf("received %v, want %v", keys, want)
	}
	select {
	case d := <-recv:
		t.Errorf("received %s again: the abandoned claim was published", d.RoutingKey)
	case <-time.After(300 * time.Millisecond):
	}
}

// The publisher checks the bound before each row: a Send that starts after
// it sends nothing, and says why.
func TestPublisherSendsNothingPastBound(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ex := e.Exchange(t, "events", "topic")
	recv := e.Consume(t, e.Queue(t, "all", ex, "#"))
	uri, err := amqp.ParseURI(testenv.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	p := newPublisher(Config{Logger: testenv.Logger(t)}.withDefaults(), []amqp.URI{uri}, t.Name())
	t.Cleanup(p.Close)
	ctx := context.Background()
	if err := p.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Watch(ctx)()
	c := &claim{rows: rows("1a", "2b"), at: time.Now().Add(-time.Minute)}
	for i := range c.rows {
		c.rows[i].Exchange, c.rows[i].RoutingKey, c.rows[i].Payload = ex, "r."+c.rows[i].MessageID, []byte{0}
	}
	b := newBatch(c)
	if err := p.Prepare(ctx, b); err != nil {
		t.Fatal(err)
	}
	for i := range b.rows {
		b.send[i] = p.Check(b, i)
	}
	b.sendBy = c.at.Add(time.Second)
	p.Send(ctx, b)
	if err := p.Await(b); !errors.Is(err, errClaimTooOld) {
		t.Errorf("Await: %v, want errClaimTooOld", err)
	}
	for _, r := range b.results {
		if r.Outcome != NotSent || r.Reason != ReasonClaimTooOld {
			t.Errorf("row %d: outcome %d reason %q, want not sent, %s", r.Row.ID, r.Outcome, r.Reason, ReasonClaimTooOld)
		}
	}
	select {
	case d := <-recv:
		t.Errorf("received %s", d.RoutingKey)
	case <-time.After(300 * time.Millisecond):
	}
}
