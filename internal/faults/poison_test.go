//go:build faults

package faults

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	amqp "github.com/rabbitmq/amqp091-go"
)

const (
	// poisonRounds is how many rows of each poison kind are inserted.
	poisonRounds = 8
	// poisonSpacing spaces the rounds out, amid the healthy load.
	poisonSpacing = 250 * time.Millisecond
	// poisonMaxAttempts and the relay's back-off of 50ms park a poison row
	// within about half a second.
	poisonMaxAttempts = 3
	// poisonMaxLatency bounds a healthy row's time from its transaction to
	// its delivery, with poison in the stream: a bad row must hold back
	// nothing for longer than its back-off.
	poisonMaxLatency = 2 * time.Second
)

// poison is one kind of row the relay can never publish.
type poison struct {
	kind      string
	exchange  string
	partition *string
	headers   *string // JSON
	payload   []byte
	lastError string // what last_error must contain
}

// TestPoisonRows mixes rows that can never be published into a healthy
// stream: a missing exchange (with and without a partition key shared with
// healthy rows), an unroutable message (exchange without bindings,
// mandatory on), a header key longer than AMQP allows, and a payload over
// OUTBOX_MAX_MESSAGE_SIZE. Each must end dead after OUTBOX_MAX_ATTEMPTS
// with a precise last_error, never delivered, while every healthy row
// arrives without delay.
func TestPoisonRows(t *testing.T) {
	s := newScenario(t, "poison_rows")
	unrouted := s.env.Name + ".unrouted"
	withChannel(t, func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare(unrouted, "direct", true, false, false, false, nil)
	})
	t.Cleanup(func() {
		withChannel(t, func(ch *amqp.Channel) error { return ch.ExchangeDelete(unrouted, false, false) })
	})
	missing := s.env.Name + ".missing"
	key0 := "key-0" // a partition key of the producer's healthy rows
	longKey := `{"` + strings.Repeat("h", 300) + `": "v"}`
	s.runPoison([]poison{
		{kind: "missing exchange", exchange: missing, payload: []byte("p"), lastError: `exchange "` + missing + `" does not exist`},
		{kind: "missing exchange, shared partition key", exchange: missing, partition: &key0, payload: []byte("p"), lastError: `exchange "` + missing + `" does not exist`},
		{kind: "unroutable", exchange: unrouted, payload: []byte("p"), lastError: "312 NO_ROUTE"},
		{kind: "header key over 255 bytes", exchange: s.exchange, headers: &longKey, payload: []byte("p"), lastError: "key longer than 255 bytes"},
		{kind: "payload over OUTBOX_MAX_MESSAGE_SIZE", exchange: s.exchange, payload: make([]byte, 2000),
			lastError: "payload of 2000 bytes is larger than the 1000 bytes allowed"},
	})
}

// TestPoisonRowOverBrokerMaxMessageSize mixes into a healthy stream rows
// under OUTBOX_MAX_MESSAGE_SIZE (1000) but over the broker's
// max_message_size (600): the relay sends them, and the broker closes the
// channel under the batch without saying which message it refused. The
// relay must find the row (README: it sends the next batch one message at a
// time), park it dead after OUTBOX_MAX_ATTEMPTS, and keep the healthy rows
// flowing.
func TestPoisonRowOverBrokerMaxMessageSize(t *testing.T) {
	s := newScenario(t, "poison_broker_max_message_size")
	setBrokerMaxMessageSize(t, brokerMaxMessageSize)
	s.runPoison([]poison{
		{kind: "payload over the broker's max_message_size", exchange: s.exchange, payload: make([]byte, 800),
			lastError: "message size 800 is larger than configured max size 600"},
	})
}

// runPoison starts the load and a relay with OUTBOX_MAX_ATTEMPTS 3, a
// back-off of 50ms and OUTBOX_MAX_MESSAGE_SIZE 1000, inserts poisonRounds
// rows of each kind amid the load, and checks that each ends dead as it
// should while every healthy row arrives in time.
func (s *scenario) runPoison(kinds []poison) {
	t := s.t
	t.Helper()
	s.startLoad()
	r := s.startRelay(map[string]string{
		"OUTBOX_MAX_ATTEMPTS":     "3",
		"OUTBOX_RETRY_BACKOFF":    "50ms",
		"OUTBOX_MAX_MESSAGE_SIZE": "1000",
	})
	s.waitFlowing("relay")

	ctx := context.Background()
	bad := map[string]poison{} // message_id → its kind
	for range poisonRounds {
		for _, p := range kinds {
			var id string
			err := s.env.Pool.QueryRow(ctx, `insert into `+s.env.Table.Ident()+` (exchange, routing_key, partition_key, headers, payload)
				values ($1, 'poison', $2, $3::jsonb, $4) returning message_id::text`, p.exchange, p.partition, p.headers, p.payload).Scan(&id)
			if err != nil {
				t.Fatalf("insert %s row: %v", p.kind, err)
			}
			bad[id] = p
		}
		time.Sleep(poisonSpacing) // spaces the poison out
	}
	s.waitFor(30*time.Second, "every poison row to be parked dead", func() bool {
		var dead int
		err := s.env.Pool.QueryRow(ctx, `select count(*) from `+s.env.Table.Ident()+` where routing_key = 'poison' and dead_at is not null`).Scan(&dead)
		return err == nil && dead == len(bad)
	})

	sum := s.finish(len(bad))
	rows, err := s.env.Pool.Query(ctx, `select message_id::text, attempts, coalesce(last_error, '') from `+s.env.Table.Ident()+` where dead_at is not null`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, lastErr string
		var attempts int
		if err := rows.Scan(&id, &attempts, &lastErr); err != nil {
			t.Fatal(err)
		}
		p, ok := bad[id]
		if !ok {
			t.Errorf("dead row %s is not a poison row: last_error %q", id, lastErr)
			continue
		}
		if attempts != poisonMaxAttempts || !strings.Contains(lastErr, p.lastError) {
			t.Errorf("%s row: attempts %d, last_error %q; want %d and %q", p.kind, attempts, lastErr, poisonMaxAttempts, p.lastError)
		}
		if n := s.cons.received(id); n > 0 {
			t.Errorf("%s row %s was delivered %d times", p.kind, id, n)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if sum.maxLatency > poisonMaxLatency {
		t.Errorf("a healthy row took %s to arrive with poison in the stream; want at most %s", sum.maxLatency, poisonMaxLatency)
	}
	if n := r.Output().Count("row parked dead"); n != len(bad) {
		t.Errorf("the relay logged %d rows parked dead, want %d", n, len(bad))
	}
}

// brokerMaxMessageSize is the broker's max_message_size during
// TestPoisonRowOverBrokerMaxMessageSize.
const brokerMaxMessageSize = 600

// setBrokerMaxMessageSize sets the broker's max_message_size, which channels
// opened afterwards obey, and restores the one in force in t.Cleanup.
func setBrokerMaxMessageSize(t *testing.T, n int) {
	t.Helper()
	ctx := context.Background()
	prev, err := harness.MaxMessageSize(ctx)
	must(t, err)
	t.Cleanup(func() {
		if err := harness.SetMaxMessageSize(ctx, prev); err != nil {
			t.Errorf("restore max_message_size: %v", err)
		}
	})
	must(t, harness.SetMaxMessageSize(ctx, n))
}
