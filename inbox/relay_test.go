package inbox_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// End to end: outbox rows published by the real relay binary, killed with
// SIGKILL three times mid-stream, consumed through Consumer.Handle. Every
// committed event has its effect exactly once. A kill between the broker's
// confirm and the row's delete republishes rows, but how many is luck, so
// the test also publishes 20 copies of delivered events itself: duplicates
// always arrive (deliveries > effects).
func TestRelayKilledEffectsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	queue := b.env.Queue(t, "events", "", "")
	bin, err := harness.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	relay := &harness.Relay{Bin: bin, Isolated: true, Env: map[string]string{
		"OUTBOX_DATABASE_URL":     b.env.URL,
		"OUTBOX_AMQP_URL":         testenv.AMQPURL(),
		"OUTBOX_TABLE":            b.env.Table.String(),
		"OUTBOX_METRICS_ADDR":     testenv.FreeAddr(t), // for /readyz
		"OUTBOX_BATCH_SIZE":       "200",
		"OUTBOX_POLL_INTERVAL":    "200ms",
		"OUTBOX_SHUTDOWN_TIMEOUT": "5s",
	}}

	const events = 5000
	w, err := outbox.NewWriter(b.env.Table.String())
	if err != nil {
		t.Fatal(err)
	}
	for range events / 100 {
		msgs := make([]outbox.Message, 100)
		for i := range msgs {
			msgs[i] = outbox.Message{RoutingKey: queue, Payload: []byte("event")}
		}
		if _, err := w.Enqueue(ctx, b.env.Pool, msgs...); err != nil { // each call commits on its own
			t.Fatal(err)
		}
	}

	sentinel := newIDs(1)[0]
	end := make(chan struct{})
	c, err := inbox.NewConsumer(b.env.Pool, inbox.Config{Name: "billing", Inbox: inbox.New(b.inbox)})
	if err != nil {
		t.Fatal(err)
	}
	tl := &tally{}
	var endOnce sync.Once
	consumeWith(t, b.env.AMQP, queue, c, tl, func(d amqp.Delivery) inbox.Handler {
		return func(ctx context.Context, tx pgx.Tx) error {
			if d.MessageId == sentinel {
				endOnce.Do(func() { close(end) })
				return nil
			}
			return b.record(ctx, tx, d, "billing")
		}
	}, nil)

	p, err := relay.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Kill while the relay drains the backlog: batches are on the wire.
	for _, left := range []int{events * 4 / 5, events / 2, events / 5} {
		testenv.WaitFor(t, 30*time.Second, "the relay to drain the outbox to the next kill", func() bool {
			live, _ := b.env.Pending(t)
			return live <= left
		})
		p.Kill()
		if p, err = relay.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 60*time.Second, "the outbox to drain", func() bool { live, dead := b.env.Pending(t); return live+dead == 0 })
	testenv.WaitFor(t, 30*time.Second, "the last relay to be connected", p.Connected) // its SIGTERM handler is set
	if err := p.Stop(); err != nil {
		t.Errorf("last relay: %v\n%s", err, p.Output().String())
	}

	// Duplicates for sure, then the sentinel behind everything else.
	rows, err := b.env.Pool.Query(ctx, "select message_id::text from "+b.effects+" limit 20")
	if err != nil {
		t.Fatal(err)
	}
	dups, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	publish(t, b.env.AMQP, queue, append(dups, sentinel)...)
	select {
	case <-end:
	case <-time.After(30 * time.Second):
		t.Fatal("the sentinel never arrived")
	}
	// The handler saw the sentinel before Handle returned and the tally
	// counted it: wait for that, or the counts below are one short.
	testenv.WaitFor(t, 10*time.Second, "the sentinel to be counted", func() bool { return tl.get(inbox.Processed) > events })

	effects, distinct := b.effectCounts(t)
	deliveries := tl.deliveries() - 1 // not the sentinel
	t.Logf("events %d, deliveries %d (duplicates from the kills %d, published twice by the test %d), effects %d",
		events, deliveries, deliveries-events-len(dups), len(dups), effects)
	if effects != events || distinct != events {
		t.Errorf("%d effects of %d events; want %d of %d", effects, distinct, events, events)
	}
	if deliveries <= effects || tl.get(inbox.Duplicate) != deliveries-events {
		t.Errorf("deliveries %d, duplicates %d, effects %d; want more deliveries than effects, all extra ones skipped", deliveries, tl.get(inbox.Duplicate), effects)
	}
	if len(tl.errs) > 0 {
		t.Errorf("consumer errors: %v", tl.errs)
	}
}
