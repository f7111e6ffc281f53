//go:build faults

package faults

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// The producer commits produceBatch rows every produceEvery: 250 rows a
// second, in small transactions, as a busy service would.
const (
	produceEvery = 20 * time.Millisecond
	produceBatch = 5
	// producerTxTimeout bounds one transaction of the producer.
	producerTxTimeout = 10 * time.Second
)

// Headers of every row the suite writes: when its transaction began (Unix
// nanoseconds; 0 for backlog rows, which count for loss but not latency),
// its sequence number among the rows of its writer, and its partition key
// (absent for unkeyed rows), so that the consumer can check per-key order.
const (
	beganHeader = "began_ns"
	seqHeader   = "seq"
	keyHeader   = "pk"
)

// producer writes rows steadily and records every committed message_id.
type producer struct {
	mu        sync.Mutex
	committed map[string]time.Time // message_id → when its transaction began
	ambiguous map[string]bool      // commit failed: outcome unknown
	failed    int                  // transactions that failed before commit
	lastErr   error

	cancel context.CancelFunc
	done   chan struct{}
}

// startProducer starts writing to w's table through pool, rows for
// exchange; it stops at stop or at the end of the test.
func startProducer(t *testing.T, pool *pgxpool.Pool, w *outbox.Writer, exchange string) *producer {
	ctx, cancel := context.WithCancel(context.Background())
	p := &producer{committed: map[string]time.Time{}, ambiguous: map[string]bool{}, cancel: cancel, done: make(chan struct{})}
	go p.run(ctx, pool, w, exchange)
	t.Cleanup(p.stop)
	return p
}

func (p *producer) run(ctx context.Context, pool *pgxpool.Pool, w *outbox.Writer, exchange string) {
	defer close(p.done)
	tick := time.NewTicker(produceEvery)
	defer tick.Stop()
	seq := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		began := time.Now()
		msgs := make([]outbox.Message, produceBatch)
		for i := range msgs {
			seq++
			msgs[i] = outbox.Message{
				Exchange:   exchange,
				RoutingKey: fmt.Sprintf("load.%d", seq),
				Payload:    fmt.Appendf(nil, "message %d", seq),
				Headers:    map[string]any{beganHeader: began.UnixNano(), seqHeader: seq},
			}
			if seq%2 == 0 {
				msgs[i].PartitionKey = fmt.Sprintf("key-%d", seq%8)
				msgs[i].Headers[keyHeader] = msgs[i].PartitionKey
			}
		}
		// A transaction under way finishes even if the producer is
		// stopped meanwhile, so that its outcome is known.
		p.write(context.WithoutCancel(ctx), pool, w, began, msgs)
	}
}

func (p *producer) write(ctx context.Context, pool *pgxpool.Pool, w *outbox.Writer, began time.Time, msgs []outbox.Message) {
	ctx, cancel := context.WithTimeout(ctx, producerTxTimeout)
	defer cancel()
	tx, err := pool.Begin(ctx)
	if err != nil {
		p.fail(err)
		return
	}
	ids, err := w.Enqueue(ctx, tx, msgs...)
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		p.fail(err)
		return
	}
	err = tx.Commit(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		if err != nil {
			p.ambiguous[id.String()] = true
		} else {
			p.committed[id.String()] = began
		}
	}
	if err != nil {
		p.lastErr = err
	}
}

// add records rows committed by someone else (a backlog).
func (p *producer) add(ids []outbox.MessageID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		p.committed[id.String()] = time.Time{}
	}
}

func (p *producer) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failed++
	p.lastErr = err
}

// stop stops writing and waits for the transaction under way.
func (p *producer) stop() {
	p.cancel()
	<-p.done
}

// snapshot returns a copy of the committed message ids and the ambiguous ones.
func (p *producer) snapshot() (committed map[string]time.Time, ambiguous map[string]bool, failed int, lastErr error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	committed = make(map[string]time.Time, len(p.committed))
	for k, v := range p.committed {
		committed[k] = v
	}
	ambiguous = make(map[string]bool, len(p.ambiguous))
	for k := range p.ambiguous {
		ambiguous[k] = true
	}
	return committed, ambiguous, p.failed, p.lastErr
}

func (p *producer) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.committed)
}

// consumerRetry is the pause before the consumer reconnects.
const consumerRetry = 200 * time.Millisecond

// consumer counts every delivery of one queue by message_id. It
// acknowledges a message only once counted, and reconnects whenever its
// connection or channel closes (broker-side close, broker restart).
type consumer struct {
	queue, name string
	urls        []string // the broker's nodes, tried in turn; testenv.AMQPURL() if none
	next        int      // index in urls of the node of the next session

	mu          sync.Mutex
	count       map[string]int
	firsts      []receipt        // first deliveries, in arrival order
	duplicates  int              // already seen, not flagged redelivered: published again
	redelivered int              // already seen, flagged redelivered by the broker
	unstamped   int              // without a began_ns header
	lastSeq     map[string]int64 // partition key → seq of its latest first delivery
	reorders    int              // first deliveries behind a later row of their key
	maxLatency  time.Duration
	sessions    int

	cancel context.CancelFunc
	done   chan struct{}
}

// receipt is the first delivery of one message.
type receipt struct {
	id    string
	began time.Time // when the producer's transaction began
	at    time.Time
}

// startConsumerOn consumes queue on a connection named name until the end
// of the test, on the broker nodes urls (testenv.AMQPURL() if none): each
// session connects to the node after the previous session's, so that the
// consumer moves on when its node stops.
func startConsumerOn(t *testing.T, name, queue string, urls []string) *consumer {
	ctx, cancel := context.WithCancel(context.Background())
	c := &consumer{queue: queue, name: name, urls: urls, count: map[string]int{}, lastSeq: map[string]int64{}, cancel: cancel, done: make(chan struct{})}
	go c.run(ctx)
	t.Cleanup(c.stop)
	return c
}

func (c *consumer) stop() {
	c.cancel()
	<-c.done
}

func (c *consumer) run(ctx context.Context) {
	defer close(c.done)
	retry := time.NewTimer(0)
	defer retry.Stop()
	for ctx.Err() == nil {
		c.session(ctx)
		retry.Reset(consumerRetry)
		select {
		case <-retry.C:
		case <-ctx.Done():
		}
	}
}

// session consumes on one connection until it breaks or ctx is done.
func (c *consumer) session(ctx context.Context) {
	cfg := amqp.Config{Properties: amqp.NewConnectionProperties(), Dial: amqp.DefaultDial(5 * time.Second)}
	cfg.Properties.SetClientConnectionName(c.name)
	url := testenv.AMQPURL()
	if len(c.urls) > 0 {
		url = c.urls[c.next%len(c.urls)]
		c.next++
	}
	conn, err := amqp.DialConfig(url, cfg)
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	if err := ch.Qos(1000, 0, false); err != nil {
		return
	}
	ds, err := ch.Consume(c.queue, "", false, false, false, false, nil)
	if err != nil {
		return
	}
	c.mu.Lock()
	c.sessions++
	c.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return
		case d, ok := <-ds:
			if !ok {
				return
			}
			c.record(d)
			_ = d.Ack(false) // lost with the connection: redelivered, counted as such
		}
	}
}

func (c *consumer) record(d amqp.Delivery) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.count[d.MessageId]
	c.count[d.MessageId] = n + 1
	if n > 0 {
		if d.Redelivered {
			c.redelivered++
		} else {
			c.duplicates++
		}
		return
	}
	r := receipt{id: d.MessageId, at: now}
	if ns, ok := d.Headers[beganHeader].(int64); !ok {
		c.unstamped++
	} else if ns > 0 {
		r.began = time.Unix(0, ns)
		c.maxLatency = max(c.maxLatency, now.Sub(r.began))
	}
	if key, ok := d.Headers[keyHeader].(string); ok {
		seq, _ := d.Headers[seqHeader].(int64)
		if last, ok := c.lastSeq[key]; ok && seq < last {
			c.reorders++
		}
		c.lastSeq[key] = max(seq, c.lastSeq[key])
	}
	c.firsts = append(c.firsts, r)
}

// mark returns how many distinct messages have arrived so far.
func (c *consumer) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.firsts)
}

// firstBeganAfter returns the arrival of the first message, among those that
// arrived after mark from, whose transaction began after since.
func (c *consumer) firstBeganAfter(since time.Time, from int) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.firsts[min(from, len(c.firsts)):] {
		if r.began.After(since) {
			return r.at, true
		}
	}
	return time.Time{}, false
}

// sessionCount returns how many times the consumer connected.
func (c *consumer) sessionCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessions
}

// received reports how many times id arrived.
func (c *consumer) received(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count[id]
}

// consumerStats are the consumer's counters.
type consumerStats struct {
	distinct, duplicates, redelivered, unstamped, reorders int
	maxLatency                                             time.Duration
}

func (c *consumer) stats() consumerStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return consumerStats{len(c.firsts), c.duplicates, c.redelivered, c.unstamped, c.reorders, c.maxLatency}
}

// ids returns a copy of the delivery counts.
func (c *consumer) ids() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.count))
	for k, v := range c.count {
		out[k] = v
	}
	return out
}
