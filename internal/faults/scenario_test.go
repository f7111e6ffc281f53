//go:build faults

package faults

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

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
	s := &scenario{t: t, name: name, env: e}
	s.exchange, s.queue = declareTopology(t, e.Name)
	w, err := outbox.NewWriter(e.Table.String())
	if err != nil {
		t.Fatal(err)
	}
	s.writer = w
	s.cons = startConsumer(t, e.Name+"-consumer", s.queue)
	return s
}

// declareTopology declares a durable topic exchange and a durable queue
// bound to it for every key, so that both survive a broker restart, and
// deletes them in t.Cleanup on a fresh connection.
func declareTopology(t *testing.T, name string) (exchange, queue string) {
	t.Helper()
	exchange, queue = name+".events", name+".all"
	withChannel(t, func(ch *amqp.Channel) error {
		if err := ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
			return err
		}
		if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
			return err
		}
		return ch.QueueBind(queue, "#", exchange, false, nil)
	})
	t.Cleanup(func() {
		withChannel(t, func(ch *amqp.Channel) error {
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
	conn, err := amqp.DialConfig(testenv.AMQPURL(), amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
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
		"OUTBOX_AMQP_URL":         testenv.AMQPURL(),
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
		if !p.exited() {
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

// waitFor is waitFor that, on timeout, first dumps the relays' stacks.
func (s *scenario) waitFor(timeout time.Duration, what string, cond func() bool) {
	s.t.Helper()
	if !waitUntil(timeout, cond) {
		s.dumpStuckRelays()
		s.t.Fatalf("timed out after %s waiting for %s (relay stacks dumped into its log below)", timeout, what)
	}
}

// waitDelivered waits until the first delivery of a row whose transaction
// began after since, and returns how long after since it arrived.
func (s *scenario) waitDelivered(what string, since time.Time, from int, timeout time.Duration) time.Duration {
	s.t.Helper()
	var at time.Time
	if !waitUntil(timeout, func() bool {
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

// finish stops the load, waits for every committed message, checks that
// nothing was lost and that only expectDead rows remain (dead), and
// reports the summary line.
func (s *scenario) finish(expectDead int) summary {
	t := s.t
	t.Helper()
	s.prod.stop()
	committed, ambiguous, failed, lastErr := s.prod.snapshot()
	if len(committed) == 0 {
		t.Fatalf("the producer committed nothing (%d transactions failed, last: %v)", failed, lastErr)
	}
	if failed > 0 || len(ambiguous) > 0 {
		t.Logf("producer: %d transactions failed before commit, %d rows of failed commits (last error: %v)", failed, len(ambiguous), lastErr)
	}

	missing := func() []string {
		var out []string
		for id := range committed {
			if s.cons.received(id) == 0 {
				out = append(out, id)
			}
		}
		return out
	}
	deadline := time.Now().Add(drainTimeout)
	lost := missing()
	for len(lost) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		lost = missing()
	}
	time.Sleep(lateLeeway)

	ctx := context.Background()
	var live, dead int
	waitUntil(5*time.Second, func() bool {
		live, dead = s.rows(ctx)
		return live == 0
	})

	got := s.cons.ids()
	var phantoms []string
	for id := range got {
		if _, ok := committed[id]; !ok && !ambiguous[id] {
			phantoms = append(phantoms, id)
		}
	}
	cs := s.cons.stats()
	sum := summary{
		scenario: s.name, committed: len(committed), lost: len(lost), duplicates: cs.duplicates, redelivered: cs.redelivered,
		reorders: cs.reorders, dead: dead, faults: s.faults, maxLatency: cs.maxLatency,
	}
	if len(s.recoveries) > 0 {
		sum.recover = slices.Max(s.recoveries)
	}
	t.Logf("recoveries: %v; the consumer connected %d times", roundAll(s.recoveries), s.cons.sessionCount())
	t.Log(sum.String())
	report(sum)

	if len(lost) > 0 {
		slices.Sort(lost)
		t.Errorf("LOST %d of %d committed messages (never delivered within %s after the load stopped)", len(lost), len(committed), drainTimeout)
		s.describeRows(lost[:min(len(lost), 10)])
	}
	if len(phantoms) > 0 {
		slices.Sort(phantoms)
		t.Errorf("%d delivered messages were never committed by the producer, e.g. %v", len(phantoms), phantoms[:min(len(phantoms), 5)])
	}
	if cs.unstamped > 0 && len(phantoms) == 0 {
		t.Errorf("%d deliveries lack the %s header", cs.unstamped, beganHeader)
	}
	if cs.reorders > 0 {
		// README, guarantee 4: "After a lost connection, unconfirmed rows
		// are published again: ... the first copy of each message arrives
		// in order."
		t.Errorf("%d messages arrived (first copy) after a later message of their partition key", cs.reorders)
	}
	if live != 0 {
		t.Errorf("%d live rows left in the table after every message arrived", live)
	}
	if dead != expectDead {
		t.Errorf("%d dead rows in the table, want %d", dead, expectDead)
		s.describeDead()
	}
	return sum
}

// backlogChunk is the size of one backlog transaction.
const backlogChunk = 1000

// burst is the backlog written just before a fault, so that it strikes a
// relay busy with full batches (publishing, awaiting confirms, settling)
// rather than an idle one. The relay, race-built, works through it in a
// second or two on this kind of machine.
const burst = 1000

// backlog commits n rows at once, in transactions of backlogChunk, so that
// the relay is busy, its batches full, when a fault strikes. They count for
// loss and duplicates but not for latency or recovery (began_ns 0), and use
// partition keys of their own.
func (s *scenario) backlog(n int) {
	s.t.Helper()
	ctx := context.Background()
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
		tx, err := s.env.Pool.Begin(ctx)
		if err != nil {
			s.t.Fatalf("backlog: %v", err)
		}
		ids, err := s.writer.Enqueue(ctx, tx, msgs...)
		if err == nil {
			err = tx.Commit(ctx)
		}
		if err != nil {
			_ = tx.Rollback(ctx)
			s.t.Fatalf("backlog: %v", err)
		}
		s.prod.add(ids)
	}
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

// describeRows logs what the table says about the given message ids.
func (s *scenario) describeRows(ids []string) {
	rows, err := s.env.Pool.Query(context.Background(), `select message_id::text, id, attempts, coalesce(last_error, ''), dead_at is not null, created_at
  from `+s.env.Table.Ident()+` where message_id::text = any($1)`, ids)
	if err != nil {
		s.t.Logf("describe rows: %v", err)
		return
	}
	defer rows.Close()
	found := map[string]bool{}
	for rows.Next() {
		var mid, lastErr string
		var id int64
		var attempts int
		var dead bool
		var created time.Time
		if err := rows.Scan(&mid, &id, &attempts, &lastErr, &dead, &created); err != nil {
			s.t.Logf("describe rows: %v", err)
			return
		}
		found[mid] = true
		s.t.Logf("  lost %s: still in table as id %d, attempts %d, dead %t, created %s, last_error %q", mid, id, attempts, dead, created.Format(time.RFC3339Nano), lastErr)
	}
	for _, id := range ids {
		if !found[id] {
			s.t.Logf("  lost %s: deleted from the table, never delivered", id)
		}
	}
}

// describeDead logs the dead rows.
func (s *scenario) describeDead() {
	rows, err := s.env.Pool.Query(context.Background(), `select id, exchange, attempts, coalesce(last_error, '') from `+
		s.env.Table.Ident()+` where dead_at is not null order by id limit 20`)
	if err != nil {
		s.t.Logf("describe dead rows: %v", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var ex, lastErr string
		var attempts int
		if err := rows.Scan(&id, &ex, &attempts, &lastErr); err == nil {
			s.t.Logf("  dead row %d: exchange %q, attempts %d, last_error %q", id, ex, attempts, lastErr)
		}
	}
}

// waitUntil polls cond every 10ms for up to timeout and reports whether it held.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
