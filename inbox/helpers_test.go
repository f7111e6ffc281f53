package inbox_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

// No goroutine outlives its test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testBundle is one test's database schema (with a migrated outbox table,
// an inbox table and an effects table) and broker names.
type testBundle struct {
	env     *testenv.Env
	inbox   schema.Table // env's schema, table "inbox"
	effects string       // quoted name of the effects table
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	env := testenv.New(t)
	b := &testBundle{env: env, inbox: schema.Table{Schema: env.Name, Name: inbox.TableDefault}}
	if err := inbox.Migrate(context.Background(), testenv.ConnAt(t, env.URL), b.inbox); err != nil {
		t.Fatalf("migrate inbox: %v", err)
	}
	// No unique constraint: a message handled twice shows as two rows.
	b.effects = pgx.Identifier{env.Name, "effects"}.Sanitize()
	if _, err := env.Pool.Exec(context.Background(), "create table "+b.effects+
		" (message_id uuid not null, consumer text not null, body text not null, at timestamptz not null default now())"); err != nil {
		t.Fatalf("create effects table: %v", err)
	}
	return b
}

// record is the test handlers' work: one row per run that committed.
func (b *testBundle) record(ctx context.Context, tx pgx.Tx, d amqp.Delivery, consumer string) error {
	_, err := tx.Exec(ctx, "insert into "+b.effects+" (message_id, consumer, body) values ($1, $2, $3)", d.MessageId, consumer, string(d.Body))
	return err
}

// effectCounts returns the number of effects and of distinct message ids
// among them.
func (b *testBundle) effectCounts(t *testing.T) (effects, distinct int) {
	t.Helper()
	if err := b.env.Pool.QueryRow(context.Background(), "select count(*), count(distinct message_id) from "+b.effects).Scan(&effects, &distinct); err != nil {
		t.Fatalf("count effects: %v", err)
	}
	return effects, distinct
}

// deadLetterQueue declares a fanout dead-letter exchange and a queue bound
// to it, and returns the exchange's name and the queue's deliveries.
func (b *testBundle) deadLetterQueue(t *testing.T) (string, <-chan amqp.Delivery) {
	t.Helper()
	dlx := b.env.Exchange(t, "dlx", "fanout")
	q := b.env.Queue(t, "dead", dlx, "")
	return dlx, b.env.Consume(t, q)
}

// declareQueue declares queue suffix with args, deleted in t.Cleanup.
func (b *testBundle) declareQueue(t *testing.T, suffix string, args amqp.Table) string {
	t.Helper()
	name := b.env.Name + "." + suffix
	ch := b.env.Channel(t)
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		t.Fatalf("declare queue %s: %v", name, err)
	}
	t.Cleanup(func() {
		if ch, err := b.env.AMQP.Channel(); err == nil {
			_, _ = ch.QueueDelete(name, false, false, false)
			_ = ch.Close()
		}
	})
	return name
}

// publish sends one persistent message per id, in order, to queue through
// the default exchange, and waits for the broker's confirms.
func publish(t *testing.T, conn *amqp.Connection, queue string, ids ...string) {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var confs []*amqp.DeferredConfirmation
	for _, id := range ids {
		c, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, amqp.Publishing{
			MessageId: id, DeliveryMode: amqp.Persistent, Body: []byte("body of " + id),
		})
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		confs = append(confs, c)
	}
	for _, c := range confs {
		if ok, err := c.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish not confirmed: %v", err)
		}
	}
}

// newIDs returns n fresh message ids.
func newIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = outbox.NewMessageID().String()
	}
	return ids
}

// repeat returns each id copies times, the copies of one id side by side
// (adjacent deliveries reach competing consumers at the same moment).
func repeat(ids []string, copies int) []string {
	var out []string
	for _, id := range ids {
		for range copies {
			out = append(out, id)
		}
	}
	return out
}

// tally counts what a test consumer saw.
type tally struct {
	mu       sync.Mutex
	outcomes map[inbox.Outcome]int
	acked    int // Processed or Duplicate, and the ack went through
	errs     []error
}

func (t *tally) add(o inbox.Outcome, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.outcomes == nil {
		t.outcomes = make(map[inbox.Outcome]int)
	}
	t.outcomes[o]++
	if err == nil && (o == inbox.Processed || o == inbox.Duplicate) {
		t.acked++
	}
	if err != nil {
		t.errs = append(t.errs, err)
	}
}

func (t *tally) ackedCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.acked
}

func (t *tally) get(o inbox.Outcome) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.outcomes[o]
}

// deliveries is how many deliveries were handled in all.
func (t *tally) deliveries() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, v := range t.outcomes {
		n += v
	}
	return n
}

// consumeWith consumes queue on a channel of conn (without auto-ack,
// prefetch 20) and hands every delivery to c.Handle with handler, until
// the channel closes or stop is called; stop waits for the goroutine.
// wrap, if not nil, may replace a delivery's Acknowledger (fault
// injection).
func consumeWith(t *testing.T, conn *amqp.Connection, queue string, c *inbox.Consumer, tl *tally,
	handler func(d amqp.Delivery) inbox.Handler, wrap func(*amqp.Delivery)) (stop func()) {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}
	if err := ch.Qos(20, 0, false); err != nil {
		t.Fatalf("qos: %v", err)
	}
	msgs, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume %s: %v", queue, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range msgs {
			if wrap != nil {
				wrap(&d)
			}
			o, err := c.Handle(ctx, d, handler(d))
			tl.add(o, err)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := ch.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
				t.Errorf("close channel: %v", err)
			}
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}
