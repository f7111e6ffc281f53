package inbox_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// quorumDeliveryLimit is the x-delivery-limit of the quorum queue below.
const quorumDeliveryLimit = 2

// The broker's own bound on poison messages, which survives restarts and
// counts across every consumer: a quorum queue with x-delivery-limit
// dead-letters a message that was returned that many times, whatever the
// Consumer's MaxFailures.
func TestQuorumQueueDeliveryLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dlx, dead := b.deadLetterQueue(t)
	queue := b.declareQueue(t, "quorum", amqp.Table{
		"x-queue-type":           "quorum",
		"x-delivery-limit":       quorumDeliveryLimit,
		"x-dead-letter-exchange": dlx,
	})
	c, err := inbox.NewConsumer(b.env.Pool, inbox.Config{Name: "billing", Inbox: inbox.New(b.inbox), MaxFailures: 100})
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	consumeWith(t, b.env.AMQP, queue, c, &tally{}, func(amqp.Delivery) inbox.Handler {
		return func(context.Context, pgx.Tx) error { runs.Add(1); return errors.New("poison") }
	}, nil)
	poison := newIDs(1)[0]
	publish(t, b.env.AMQP, queue, poison)

	got := testenv.Receive(t, dead, 1, 20*time.Second)[0]
	if got.MessageId != poison || runs.Load() != quorumDeliveryLimit+1 {
		t.Errorf("dead-lettered %s after %d runs; want %s after %d (the first delivery and %d redeliveries)",
			got.MessageId, runs.Load(), poison, quorumDeliveryLimit+1, quorumDeliveryLimit)
	}
}

// Consume then produce: the handler enqueues an outbox row in the
// transaction that claims the message. A duplicate enqueues nothing, and a
// handler failing after its enqueue leaves no row behind: one row per
// message, so the next service in the chain sees each event once too.
func TestHandlerEnqueuesOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	queue := b.env.Queue(t, "orders", "", "")
	w, err := outbox.NewWriter(b.env.Table.String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := inbox.NewConsumer(b.env.Pool, inbox.Config{Name: "billing", Inbox: inbox.New(b.inbox)})
	if err != nil {
		t.Fatal(err)
	}
	ids := newIDs(10)
	var failed atomic.Bool
	tl := &tally{}
	consumeWith(t, b.env.AMQP, queue, c, tl, func(d amqp.Delivery) inbox.Handler {
		return func(ctx context.Context, tx pgx.Tx) error {
			if _, err := w.Enqueue(ctx, tx, outbox.Message{RoutingKey: "invoice.created", Payload: []byte(d.MessageId)}); err != nil {
				return err
			}
			if d.MessageId == ids[0] && failed.CompareAndSwap(false, true) {
				return errors.New("fails after enqueuing")
			}
			return nil
		}
	}, nil)
	publish(t, b.env.AMQP, queue, repeat(ids, 2)...)
	testenv.WaitFor(t, 20*time.Second, "every delivery acked", func() bool { return tl.ackedCount() == 20 })

	var rows, distinct int
	if err := b.env.Pool.QueryRow(context.Background(), "select count(*), count(distinct payload) from "+b.env.Table.Ident()).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != 10 || distinct != 10 || !failed.Load() {
		t.Errorf("%d outbox rows for %d messages (handler failed once: %t); want 10 for 10", rows, distinct, failed.Load())
	}
}
