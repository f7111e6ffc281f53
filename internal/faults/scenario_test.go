//go:build faults

package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// Bounds of every scenario's waits.
const (
	// startTimeout bounds a fresh relay's start: connections, leadership,
	// first delivery.
	startTimeout = 30 * time.Second
	// recoverTimeout bounds the recovery from one fault.
	recoverTimeout = 30 * time.Second
	// drainTimeout bounds the wait, after the producer stops, for every
	// committed message.
	drainTimeout = 60 * time.Second
	// lateLeeway is how long the test keeps counting after the last
	// expected message, so that late duplicates are counted too.
	lateLeeway = 300 * time.Millisecond
)

// scenario is one test's table, topology, load and relays.
type scenario struct {
	t        *testing.T
	name     string
	env      *testenv.Env
	exchange string
	queue    string
	writer   *outbox.Writer
	prod     *producer
	cons     *consumer
	procs    []*relayProc // relays started
	amqpURLs []string     // the broker's nodes; testenv.AMQPURL() if none
	seq      int          // rows written by backlog so far

	faults     int
	recoveries []time.Duration
}

// newScenario sets up the table, a durable topic exchange and a durable
// queue bound to it for every key, and starts the consumer. The load starts
// with startLoad.
func newScenario(t *testing.T, name string) *scenario {
	t.Helper()
	return newScenarioOn(t, name, testenv.New(t))
}

// newScenarioOn is newScenario on an environment set up by the caller, e.g.
// on servers of the test's own (testenv.PGPair.Env); its relays connect to
// e.URL.
func newScenarioOn(t *testing.T, name string, e *testenv.Env) *scenario {
	t.Helper()
	return newScenarioWith(t, name, e, nil, nil)
}

// newScenarioWith is newScenarioOn on the broker nodes urls (testenv.AMQPURL()
// if none), with the queue declared with queueArgs (e.g. a quorum queue): the
// topology is declared through the first node that answers, the consumer
// moves from node to node, and the relays get every node in
// OUTBOX_AMQP_URL.
func newScenarioWith(t *testing.T, name string, e *testenv.Env, urls []string, queueArgs amqp.Table) *scenario {
	t.Helper()
	s := &scenario{t: t, name: name, env: e, amqpURLs: urls}
	s.exchange, s.queue = declareTopologyOn(t, e.Name, urls, queueArgs)
	w, err := outbox.NewWriter(e.Table.String())
	if err != nil {
		t.Fatal(err)
	}
	s.writer = w
	s.cons = startConsumerOn(t, e.Name+"-consumer", s.queue, urls)
	return s
}

// declareTopologyOn declares, on the first of the broker nodes urls that
// answers (testenv.AMQPURL() if none), a durable topic exchange and a
// durable queue with queueArgs bound to it for every key, so that both
// survive a broker restart, and deletes them in t.Cleanup on a fresh
// connection.
func declareTopologyOn(t *testing.T, name string, urls []string, queueArgs amqp.Table) (exchange, queue string) {
	t.Helper()
	exchange, queue = name+".events", name+".all"
	withChannelOn(t, urls, func(ch *amqp.Channel) error {
		if err := ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
			return err
		}
		if _, err := ch.QueueDeclare(queue, true, false, false, false, queueArgs); err != nil {
			return err
		}
		return ch.QueueBind(queue, "#", exchange, false, nil)
	})
	t.Cleanup(func() {
		withChannelOn(t, urls, func(ch *amqp.Channel) error {
			if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
				return err
			}
			return ch.ExchangeDelete(exchange, false, false)
		})
	})
	return exchange, queue
}

// withChannel runs f on a channel of a short-lived connection of its own.
func withChannel(t *testing.T, f func(ch *amqp.Channel) error) {
	t.Helper()
	withChannelOn(t, nil, f)
}

// withChannelOn is withChannel on the first of the broker nodes urls that
// answers (testenv.AMQPURL() if none).
func withChannelOn(t *testing.T, urls []string, f func(ch *amqp.Channel) error) {
	t.Helper()
	if len(urls) == 0 {
		urls = []string{testenv.AMQPURL()}
	}
	var conn *amqp.Connection
	var err error
	for _, u := range urls {
		if conn, err = amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)}); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("connect to broker: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err == nil {
		err = f(ch)
	}
	if err != nil {
		t.Fatalf("broker topology: %v", err)
	}
}

// startLoad starts the producer.
func (s *scenario) startLoad() {
	s.prod = startProducer(s.t, s.env.Pool, s.writer, s.exchange)
}

// relayEnv is the environment of a relay on the scenario's table, with its
// own metrics address and the overrides in extra (an empty value removes a
// variable).
func (s *scenario) relayEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"OUTBOX_DATABASE_URL":     s.env.URL,
		"OUTBOX_AMQP_URL":         s.amqpURL(),
		"OUTBOX_TABLE":            s.env.Table.String(),
		"OUTBOX_METRICS_ADDR":     testenv.FreeAddr(s.t),
		"OUTBOX_POLL_INTERVAL":    "200ms",
		"OUTBOX_BATCH_SIZE":       "200",
		"OUTBOX_CONFIRM_TIMEOUT":  "5s",
		"OUTBOX_SHUTDOWN_TIMEOUT": "5s",
		"OUTBOX_LOG_LEVEL":        "info",
	}
	for k, v := range extra {
		if v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	return env
}

// amqpURL is the relays' OUTBOX_AMQP_URL: the scenario's broker nodes.
func (s *scenario) amqpURL() string {
	if len(s.amqpURLs) == 0 {
		return testenv.AMQPURL()
	}
	return strings.Join(s.amqpURLs, ",")
}

// startRelay starts one more relay process.
func (s *scenario) startRelay(extra map[string]string) *relayProc {
	s.t.Helper()
	p := startRelay(s.t, fmt.Sprintf("relay-%d", len(s.procs)+1), s.relayEnv(extra))
	s.procs = append(s.procs, p)
	return p
}

// dumpStuckRelays makes every relay still running print its goroutines
// (SIGQUIT) into its log, which the test shows when it fails: where a
// relay that does not recover is stuck. A goroutine spinning on a CPU shows
// no stack there, so the threads' stacks are taken first with gdb, when
// it is installed.
func (s *scenario) dumpStuckRelays() {
	for _, p := range s.procs {
		if !p.Exited() {
			p.threadStacks()
			p.quit(5 * time.Second)
		}
	}
}

// waitFlowing waits until a row written from now on has been delivered: the
// relay is up and publishing.
func (s *scenario) waitFlowing(what string) time.Duration {
	s.t.Helper()
	since, from := time.Now(), s.cons.mark()
	return s.waitDelivered(what, since, from, startTimeout)
}

// waitFor is harness.WaitFor that, on timeout, first dumps the relays'
// stacks.
func (s *scenario) waitFor(timeout time.Duration, what string, cond func() bool) {
	s.t.Helper()
	if !harness.Within(timeout, cond) {
		s.dumpStuckRelays()
		s.t.Fatalf("timed out after %s waiting for %s (relay stacks dumped into its log below)", timeout, what)
	}
}

// waitDelivered waits until the first delivery of a row whose transaction
// began after since, and returns how long after since it arrived.
func (s *scenario) waitDelivered(what string, since time.Time, from int, timeout time.Duration) time.Duration {
	s.t.Helper()
	var at time.Time
	if !harness.Within(timeout, func() bool {
		var ok bool
		at, ok = s.cons.firstBeganAfter(since, from)
		return ok
	}) {
		s.dumpStuckRelays()
		s.t.Fatalf("%s: no row written afterwards was delivered within %s (relay goroutines dumped into its log below)", what, timeout)
	}
	return at.Sub(since)
}

// recovered records the recovery from a fault that ended at since (the
// consumer's mark taken then): the time until a row written after since
// arrives.
func (s *scenario) recovered(what string, since time.Time, from int) time.Duration {
	s.t.Helper()
	d := s.waitDelivered(what, since, from, recoverTimeout)
	s.faults++
	s.recoveries = append(s.recoveries, d)
	s.t.Logf("%s: recovered in %s", what, d.Round(time.Millisecond))
	return d
}

// backlogChunk is the size of one backlog transaction.
const backlogChunk = 1000

// burst is the backlog written just before a fault, so that it strikes a
// relay busy with full batches (publishing, awaiting confirms, settling)
// rather than an idle one. The relay, race-built, works through it in a
// second or two on this kind of machine.
const burst = 1000

// backlog commits n rows at once, in one transaction (enqueued backlogChunk
// at a time), so that the relay is busy, its batches full, when a fault
// strikes: it cannot drain the first rows while the last are still being
// written. They count for loss and duplicates but not for latency or
// recovery (began_ns 0), and use partition keys of their own.
func (s *scenario) backlog(n int) {
	s.t.Helper()
	ctx := context.Background()
	tx, err := s.env.Pool.Begin(ctx)
	if err != nil {
		s.t.Fatalf("backlog: %v", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var all []outbox.MessageID
	for done := 0; done < n; done += backlogChunk {
		msgs := make([]outbox.Message, min(backlogChunk, n-done))
		for i := range msgs {
			s.seq++
			seq := s.seq
			msgs[i] = outbox.Message{
				Exchange:   s.exchange,
				RoutingKey: fmt.Sprintf("backlog.%d", seq),
				Payload:    fmt.Appendf(nil, "backlog %d", seq),
				Headers:    map[string]any{beganHeader: 0, seqHeader: seq},
			}
			if seq%2 == 0 {
				msgs[i].PartitionKey = fmt.Sprintf("backlog-%d", seq%8)
				msgs[i].Headers[keyHeader] = msgs[i].PartitionKey
			}
		}
		ids, err := s.writer.Enqueue(ctx, tx, msgs...)
		if err != nil {
			s.t.Fatalf("backlog: %v", err)
		}
		all = append(all, ids...)
	}
	if err := tx.Commit(ctx); err != nil {
		s.t.Fatalf("backlog: %v", err)
	}
	s.prod.add(all)
}

// busy reports whether the table holds more than n live rows: the relay
// still has a backlog to work through.
func (s *scenario) busy(n int) bool {
	live, _ := s.rows(context.Background())
	return live > n
}

// rows counts the table's live and dead rows.
func (s *scenario) rows(ctx context.Context) (live, dead int) {
	err := s.env.Pool.QueryRow(ctx, "select count(*) filter (where dead_at is null), count(*) filter (where dead_at is not null) from "+
		s.env.Table.Ident()).Scan(&live, &dead)
	if err != nil {
		s.t.Fatalf("count rows: %v", err)
	}
	return live, dead
}
