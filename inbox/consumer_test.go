package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// crashBeforeAck is a delivery's acknowledger for a consumer killed after
// its commit and before its ack: the ack never reaches the broker, and the
// connection dies, so the broker redelivers everything unacked on it.
type crashBeforeAck struct {
	amqp.Acknowledger
	conn *amqp.Connection
}

func (c crashBeforeAck) Ack(uint64, bool) error {
	_ = c.conn.Close()
	return errors.New("killed between commit and ack")
}

// Each message published three times, one handler failing once, and the
// consumer killed between a commit and its ack: every effect happens once.
func TestHandleEffectivelyOnceUnderFaults(t *testing.T) {
	t.Parallel()
	b := setup(t)
	queue := b.env.Queue(t, "work", "", "")
	ids := newIDs(30)
	failOnce, crashOn := ids[3], ids[5]
	publish(t, b.env.AMQP, queue, repeat(ids, 3)...)

	var failed atomic.Bool
	handler := func(d amqp.Delivery) inbox.Handler {
		return func(ctx context.Context, tx pgx.Tx) error {
			if err := b.record(ctx, tx, d, "billing"); err != nil {
				return err
			}
			if d.MessageId == failOnce && failed.CompareAndSwap(false, true) {
				return errors.New("the handler fails once") // after its work: all rolled back
			}
			return nil
		}
	}
	newConsumer := func() *inbox.Consumer {
		c, err := inbox.NewConsumer(b.env.Pool, inbox.Config{Name: "billing", Inbox: inbox.New(b.inbox)})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	// The first consumer process "dies" when it acks crashOn.
	conn1 := testenv.AMQPConn(t, b.env.Name+".1")
	var crashed atomic.Bool
	t1 := &tally{}
	stop1 := consumeWith(t, conn1, queue, newConsumer(), t1, handler, func(d *amqp.Delivery) {
		if d.MessageId == crashOn && crashed.CompareAndSwap(false, true) {
			d.Acknowledger = crashBeforeAck{Acknowledger: d.Acknowledger, conn: conn1}
		}
	})
	testenv.WaitFor(t, 20*time.Second, "the first consumer to crash", conn1.IsClosed)
	stop1()

	t2 := &tally{}
	conn2 := testenv.AMQPConn(t, b.env.Name+".2")
	stop2 := consumeWith(t, conn2, queue, newConsumer(), t2, handler, nil)
	testenv.WaitFor(t, 30*time.Second, "all 90 deliveries acked", func() bool { return t1.ackedCount()+t2.ackedCount() == 90 })
	stop2()

	effects, distinct := b.effectCounts(t)
	deliveries := t1.deliveries() + t2.deliveries()
	t.Logf("deliveries %d (first consumer %d, after the crash %d), effects %d", deliveries, t1.deliveries(), t2.deliveries(), effects)
	if effects != 30 || distinct != 30 {
		t.Errorf("%d effects of %d messages; want 30 of 30", effects, distinct)
	}
	if deliveries <= 90 || t1.get(inbox.Requeued)+t2.get(inbox.Requeued) != 1 {
		t.Errorf("deliveries %d, requeued %d; want > 90 (the crash's and the failure's redeliveries) and 1",
			deliveries, t1.get(inbox.Requeued)+t2.get(inbox.Requeued))
	}
	if dups := t1.get(inbox.Duplicate) + t2.get(inbox.Duplicate); dups < 61 {
		t.Errorf("%d duplicates skipped; want at least 60 copies + the crashed message's redelivery", dups)
	}
	var crashedEffects int
	if err := b.env.Pool.QueryRow(context.Background(), "select count(*) from "+b.effects+" where message_id = $1", crashOn).Scan(&crashedEffects); err != nil || crashedEffects != 1 {
		t.Errorf("the message acked by the crash has %d effects (%v); want 1", crashedEffects, err)
	}
	for _, err := range t2.errs {
		if !strings.Contains(err.Error(), "the handler fails once") {
			t.Errorf("error after the crash: %v; want none but the handler's one failure", err)
		}
	}
	if !failed.Load() {
		t.Error("the failing handler never ran")
	}
}

// Two consumers of one service (one consumer name) on one queue receive
// copies of each message at the same moment: each effect happens once,
// under READ COMMITTED (the second claim waits) and REPEATABLE READ (it
// fails with 40001 and the Consumer retries).
func TestCompetingConsumersSameName(t *testing.T) {
	t.Parallel()
	for _, iso := range []pgx.TxIsoLevel{pgx.ReadCommitted, pgx.RepeatableRead} {
		t.Run(string(iso), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			queue := b.env.Queue(t, "work", "", "")
			const messages, copies = 50, 4
			handler := func(d amqp.Delivery) inbox.Handler {
				return func(ctx context.Context, tx pgx.Tx) error {
					if err := b.record(ctx, tx, d, "billing"); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, "select pg_sleep(0.002)") // hold the claim while the copy arrives
					return err
				}
			}
			tallies := []*tally{{}, {}}
			for i, tl := range tallies {
				c, err := inbox.NewConsumer(b.env.Pool, inbox.Config{Name: "billing", Inbox: inbox.New(b.inbox), TxOptions: pgx.TxOptions{IsoLevel: iso}})
				if err != nil {
					t.Fatal(err)
				}
				consumeWith(t, testenv.AMQPConn(t, fmt.Sprintf("%s.%d", b.env.Name, i)), queue, c, tl, handler, nil)
			}
			publish(t, b.env.AMQP, queue, repeat(newIDs(messages), copies)...)
			testenv.WaitFor(t, 30*time.Second, "every delivery acked", func() bool {
				return tallies[0].ackedCount()+tallies[1].ackedCount() == messages*copies
			})
			effects, distinct := b.effectCounts(t)
			t.Logf("%s: consumer 1 %v, consumer 2 %v; effects %d", iso, tallies[0].outcomes, tallies[1].outcomes, effects)
			if effects != messages || distinct != messages {
				t.Errorf("%d effects of %d messages; want %d of %d", effects, distinct, messages, messages)
			}
			for i, tl := range tallies {
				if tl.get(inbox.Processed) == 0 || len(tl.errs) > 0 {
					t.Errorf("consumer %d: %v, errors %v; want a share of the work and no error", i+1, tl.outcomes, tl.errs)
				}
			}
		})
	}
}

// A message whose handler keeps failing is rejected without requeue after
// MaxFailures, and reaches the dead-letter exchange; the rest flows.
func TestHandlePoisonMessageDeadLettered(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dlx, dead := b.deadLetterQueue(t)
	queue := b.declareQueue(t, "work", amqp.Table{"x-dead-letter-exchange": dlx})
	metrics, reg := newMetrics(t)
	c, err := inbox.NewConsumer(b.env.Pool, inbox.Config{Name: "billing", Inbox: inbox.New(b.inbox), MaxFailures: 3, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	ids := newIDs(6)
	poison := ids[2]
	var runs sync.Map // message id -> *atomic.Int32
	handler := func(d amqp.Delivery) inbox.Handler {
		return func(ctx context.Context, tx pgx.Tx) error {
			n, _ := runs.LoadOrStore(d.MessageId, new(atomic.Int32))
			n.(*atomic.Int32).Add(1)
			if d.MessageId == poison {
				return errors.New("poison")
			}
			return b.record(ctx, tx, d, "billing")
		}
	}
	tl := &tally{}
	consumeWith(t, b.env.AMQP, queue, c, tl, handler, nil)
	publish(t, b.env.AMQP, queue, ids...)

	got := testenv.Receive(t, dead, 1, 20*time.Second)[0]
	if got.MessageId != poison {
		t.Fatalf("dead-lettered %s; want the poison message %s", got.MessageId, poison)
	}
	testenv.WaitFor(t, 10*time.Second, "the good messages acked", func() bool { return tl.ackedCount() == 5 })
	n, _ := runs.Load(poison)
	if runs := n.(*atomic.Int32).Load(); runs != 3 {
		t.Errorf("the poison handler ran %d times; want 3", runs)
	}
	if effects, _ := b.effectCounts(t); effects != 5 {
		t.Errorf("%d effects; want 5 (none of the poison message)", effects)
	}
	if tl.get(inbox.DeadLettered) != 1 || tl.get(inbox.Requeued) != 2 {
		t.Errorf("outcomes %v; want 1 dead-lettered after 2 requeued", tl.outcomes)
	}
	wantMetrics(t, reg, `
inbox_claims_total{consumer="billing"} 5
inbox_dead_lettered_total{consumer="billing",reason="failures"} 1
inbox_handler_failures_total{consumer="billing"} 3
`)
}

// A delivery without a message_id, or with one that is not a UUID, is
// refused with a clear error and dead-lettered at once; its handler never
// runs and nothing is written.
func TestHandleRefusesMissingMessageID(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dlx, dead := b.deadLetterQueue(t)
	queue := b.declareQueue(t, "work", amqp.Table{"x-dead-letter-exchange": dlx})
	metrics, reg := newMetrics(t)
	c, err := inbox.NewConsumer(b.env.Pool, inbox.Config{Name: "billing", Inbox: inbox.New(b.inbox), Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	var ran atomic.Int32
	tl := &tally{}
	consumeWith(t, b.env.AMQP, queue, c, tl, func(amqp.Delivery) inbox.Handler {
		return func(context.Context, pgx.Tx) error { ran.Add(1); return nil }
	}, nil)
	publish(t, b.env.AMQP, queue, "", "not-a-uuid")

	testenv.Receive(t, dead, 2, 10*time.Second)
	testenv.WaitFor(t, 5*time.Second, "both outcomes", func() bool { return tl.deliveries() == 2 })
	if ran.Load() != 0 || tl.get(inbox.DeadLettered) != 2 {
		t.Errorf("handler ran %d times, outcomes %v; want 0 and 2 dead-lettered", ran.Load(), tl.outcomes)
	}
	tl.mu.Lock()
	for _, err := range tl.errs {
		if !errors.Is(err, inbox.ErrMessageID) {
			t.Errorf("error %v; want one matching ErrMessageID", err)
		}
		t.Logf("error: %v", err)
	}
	tl.mu.Unlock()
	var claims int
	if err := b.env.Pool.QueryRow(context.Background(), "select count(*) from "+b.inbox.Ident()).Scan(&claims); err != nil || claims != 0 {
		t.Errorf("%d claims (%v); want none", claims, err)
	}
	wantMetrics(t, reg, `inbox_dead_lettered_total{consumer="billing",reason="message_id"} 2`+"\n")
}
