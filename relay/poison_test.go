package relay_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

const (
	// poisonSeedDefault seeds the generator; OUTBOX_POISON_SEED picks another.
	poisonSeedDefault = 20250611
	// poisonRows is how many rows each run generates, a third of them good.
	poisonRows = 300
	// poisonDeadline bounds the time for every row to be delivered or parked.
	poisonDeadline = 60 * time.Second
	// poisonMaxAttempts parks a bad row after its second failed attempt.
	poisonMaxAttempts = 2
	// problemCC is what the broker says of a CC header that is not an
	// array: it closes the channel, and the relay must find the row.
	problemCC = "unacceptable_type_in_header"
)

// No value a row can hold stalls the relay: rows of every column's edge
// values (lengths 0, 1, 255, 256 and 65536 bytes, multibyte runes across
// the 255-byte boundary, odd and oversized headers, payloads of 0 to 64 KiB)
// are each delivered or parked dead with a last_error that names the
// problem, every good row arrives at most twice, and it is all over within
// poisonDeadline. "constrained" runs on a migrated table, which refuses
// some rows at insert; "predating" drops migration 003's constraints on
// what AMQP carries first, as for rows written before them, so the relay
// meets every row it can defend itself against (it keeps the check on
// partition_key: a key too long for its index has no other defence).
// "channel_exception" adds a header the broker refuses by closing the
// channel (CC, not an array): the relay isolates and parks the row, and
// rows in flight with it are sent again, once per close.
func TestRelayPoisonValuesNeverStall(t *testing.T) {
	t.Parallel()
	seed := uint64(poisonSeedDefault)
	if s := os.Getenv("OUTBOX_POISON_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("OUTBOX_POISON_SEED: %v", err)
		}
	}
	for _, name := range []string{"constrained", "predating", "channel_exception"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			t.Logf("seed %d (set OUTBOX_POISON_SEED to change it)", seed)
			runPoison(t, rand.New(rand.NewPCG(seed, 0)), name != "constrained", name == "channel_exception")
		})
	}
}

// runPoison inserts poisonRows rows drawn with rng, each in its own
// statement, runs a relay until every row is delivered or parked, and checks
// what became of each.
func runPoison(t *testing.T, rng *rand.Rand, predating, withCC bool) {
	b := setup(t)
	ctx := context.Background()
	tbl := b.env.Table
	if predating {
		if _, err := b.env.Pool.Exec(ctx, "alter table "+tbl.Ident()+" drop constraint "+tbl.Local("exchange_size")+
			", drop constraint "+tbl.Local("routing_key_size")+", drop constraint "+tbl.Local("content_type_size")); err != nil {
			t.Fatal(err)
		}
	}
	v := newPoisonValues(t, b, withCC)
	rows := map[string]poisonRow{} // by message_id
	var refused, bad, cc int
	for i := range poisonRows {
		r := v.row(rng, i%3 == 0)
		if withCC && i%10 == 1 {
			// Good but for its header: the broker, not the relay,
			// must refuse it.
			r = v.row(rng, true)
			r.headers, r.problems = &v.headers[len(v.headers)-1].json, []string{problemCC}
		}
		var id string
		err := b.env.Pool.QueryRow(ctx, `insert into `+tbl.Ident()+`
			(exchange, routing_key, partition_key, content_type, headers, payload)
			values ($1, $2, $3, $4, $5::jsonb, $6) returning message_id::text`,
			r.exchange, r.key, r.partition, r.contentType, r.headers, r.payload).Scan(&id)
		if mustRefuse := insertRefusals(r, predating); err != nil || len(mustRefuse) > 0 {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || !slices.Contains(mustRefuse, strings.TrimPrefix(pe.ConstraintName, tbl.Name+"_")) {
				t.Fatalf("row %d: insert error %v; want a violation of one of %v", i, err, mustRefuse)
			}
			refused++
			continue
		}
		rows[id] = r
		if len(r.problems) > 0 {
			bad++
		}
		if slices.Contains(r.problems, problemCC) {
			cc++
		}
	}
	t.Logf("%d rows: %d refused at insert, %d to be parked, %d to be delivered", poisonRows, refused, bad, len(rows)-bad)

	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.MaxAttempts = poisonMaxAttempts
	cfg.RetryBackoff, cfg.RetryBackoffMax = 10*time.Millisecond, 50*time.Millisecond
	cfg.BatchSize = 50
	// Rows backing off are claimed again at the next poll: a short one
	// keeps the chains of bad rows sharing a partition_key quick.
	cfg.PollInterval = 100 * time.Millisecond
	cfg.Registerer = reg
	cfg.Logger = slog.New(slog.NewTextHandler(clippedWriter{t}, nil))
	start(t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			for _, r := range leftRows(t, b, "dead_at is null limit 5") {
				t.Logf("left live: %+v", r)
			}
		}
	})

	amqpClosed := b.env.AMQP.NotifyClose(make(chan *amqp.Error, 1))
	received := map[string]int{}
	began := time.Now()
	testenv.WaitFor(t, poisonDeadline, "every row delivered or parked", func() bool {
		for drained := false; !drained; {
			select {
			case d, ok := <-b.recv:
				if !ok {
					t.Fatalf("consumer stopped: %v", <-amqpClosed)
				}
				received[d.MessageId]++
			default:
				drained = true
			}
		}
		live, _ := b.env.Pending(t)
		return live == 0 && len(received) >= len(rows)-bad
	})
	t.Logf("settled in %s", time.Since(began))

	// A broker that refuses a message closes the channel: the relay
	// reconnects, isolates the row and fails it, a few reconnects per
	// attempt. Anything else reconnecting means the relay took a bad row
	// for an outage.
	mfs := gather(t, reg)
	reconnects := value(mfs["outbox_reconnects_total"], "connection", "amqp")
	t.Logf("amqp reconnects %.0f, rows not sent for a closed channel %.0f, %d rows with a CC header", reconnects,
		value(mfs["outbox_publish_failures_total"], "reason", "channel_closed"), cc)
	if limit := float64(3*poisonMaxAttempts*cc + 2); reconnects > limit {
		t.Errorf("%.0f reconnects to the broker, want at most %.0f", reconnects, limit)
	}
	// Sent again after a channel closed under them, rows can arrive once
	// per close, and the relay reconnects after each.
	maxDeliveries := 2.0
	if withCC {
		maxDeliveries += reconnects
	}

	for id, n := range received {
		r, ok := rows[id]
		switch {
		case !ok:
			t.Errorf("received unknown message %s", id)
		case len(r.problems) > 0:
			t.Errorf("message %s was delivered; want it parked for %q", id, r.problems)
		case float64(n) > maxDeliveries:
			t.Errorf("message %s delivered %d times, want at most %.0f: the relay looped", id, n, maxDeliveries)
		}
	}
	dead := leftRows(t, b, "dead_at is not null")
	for _, d := range dead {
		r := rows[d.MessageID]
		switch {
		case len(r.problems) == 0:
			t.Errorf("message %s parked (%s); want it delivered", d.MessageID, d.LastError)
		case d.Attempts != poisonMaxAttempts:
			t.Errorf("message %s parked after %d attempts, want %d", d.MessageID, d.Attempts, poisonMaxAttempts)
		case !slices.ContainsFunc(r.problems, func(p string) bool { return strings.Contains(d.LastError, p) }):
			t.Errorf("message %s: last_error %q names none of %q", d.MessageID, d.LastError, r.problems)
		}
	}
	if len(dead) != bad {
		t.Errorf("%d rows parked, want %d", len(dead), bad)
	}
}

// leftRow is a row left in the table, its text clipped.
type leftRow struct {
	MessageID string
	Attempts  int
	Exchange  string
	Key       string
	Headers   string
	LastError string
}

// leftRows returns the rows left in the table that match where.
func leftRows(t *testing.T, b *testBundle, where string) []leftRow {
	rows, err := b.env.Pool.Query(context.Background(), `select message_id::text, attempts, left(exchange, 80),
		left(routing_key, 80), coalesce(left(headers::text, 80), ''), coalesce(left(last_error, 300), '')
		from `+b.env.Table.Ident()+` where `+where)
	var left []leftRow
	if err == nil {
		left, err = pgx.CollectRows(rows, pgx.RowToStructByPos[leftRow])
	}
	if err != nil {
		t.Fatalf("read rows left: %v", err)
	}
	return left
}

// clippedWriter sends a logger's lines to t.Log, clipped: the relay logs a
// failed row's routing key, which may be 64 KiB here.
type clippedWriter struct{ t *testing.T }

func (w clippedWriter) Write(p []byte) (int, error) {
	s := strings.TrimRight(string(p), "\n")
	if len(s) > 300 {
		s = s[:300] + fmt.Sprintf("… (%d bytes)", len(s))
	}
	w.t.Log(s)
	return len(p), nil
}
