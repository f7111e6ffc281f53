package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
)

// notificationLeeway is how long a test waits before asserting that
// something did not happen.
const notificationLeeway = 300 * time.Millisecond

type testBundle struct {
	env      *testenv.Env
	exchange string
	queue    string
	recv     <-chan amqp.Delivery
}

// setup gives a test its own table, a topic exchange and a queue bound to it
// for every key, and a consumer on that queue.
func setup(t *testing.T) *testBundle {
	t.Helper()
	e := testenv.New(t)
	ex := e.Exchange(t, "events", "topic")
	q := e.Queue(t, "all", ex, "#")
	return &testBundle{env: e, exchange: ex, queue: q, recv: e.Consume(t, q)}
}

// config is a relay configuration for the test's table with fast retries.
func (b *testBundle) config(t *testing.T) relay.Config {
	return relay.Config{
		DatabaseURL:     b.env.URL,
		AMQPURL:         testenv.AMQPURL(),
		Table:           b.env.Table,
		PollInterval:    time.Second,
		RetryBackoff:    20 * time.Millisecond,
		RetryBackoffMax: 100 * time.Millisecond,
		Name:            b.env.Name,
		Logger:          testenv.Logger(t),
	}
}

// start runs a relay until the returned stop is called (or the test ends)
// and returns what Run returned.
func start(t *testing.T, cfg relay.Config) (stop func() error) {
	t.Helper()
	r, err := relay.New(cfg)
	if err != nil {
		t.Fatalf("relay.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(cfg.ShutdownTimeout + 30*time.Second):
				t.Errorf("relay did not stop")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("relay.Run: %v", err)
		}
	})
	return stop
}

// row is a row to insert, with only the columns a test sets.
type row struct {
	exchange, key string
	partition     *string
	contentType   *string
	headers       any
	payload       []byte
}

// insert writes rows in one transaction and returns their message ids.
func insert(t *testing.T, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, b *testBundle, rows ...row) []string {
	t.Helper()
	ids := make([]string, len(rows))
	for i, r := range rows {
		var h []byte
		if r.headers != nil {
			var err error
			if h, err = json.Marshal(r.headers); err != nil {
				t.Fatal(err)
			}
		}
		err := db.QueryRow(context.Background(), `insert into `+b.env.Table.Ident()+`
			(exchange, routing_key, partition_key, content_type, headers, payload)
			values ($1, $2, $3, $4, $5, $6) returning message_id::text`,
			r.exchange, r.key, r.partition, r.contentType, h, r.payload).Scan(&ids[i])
		if err != nil {
			t.Fatalf("insert row: %v", err)
		}
	}
	return ids
}

func ptr[T any](v T) *T { return &v }

func TestRelayDeliversCommittedRowsOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()

	tx, err := b.env.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := insert(t, tx, b,
		row{exchange: b.exchange, key: "job.completed", contentType: ptr("application/json"),
			headers: map[string]any{"s": "x", "i": 42, "f": 1.5, "b": true, "n": nil,
				"o": map[string]any{"deep": []any{1, "two", nil}}},
			payload: []byte(`{"job":1}`)},
		row{exchange: b.exchange, key: "job.started", payload: []byte{0, 1, 2, 255}},
	)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err = b.env.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	insert(t, tx, b, row{exchange: b.exchange, key: "job.rolledback", payload: []byte("never")})
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	var createdAt time.Time
	if err := b.env.Pool.QueryRow(ctx, "select created_at from "+b.env.Table.Ident()+" where message_id = $1", ids[0]).Scan(&createdAt); err != nil {
		t.Fatal(err)
	}

	start(t, b.config(t))
	got := testenv.Receive(t, b.recv, 2, 10*time.Second)
	byID := map[string]amqp.Delivery{}
	for _, d := range got {
		byID[d.MessageId] = d
	}
	d, ok := byID[ids[0]]
	if !ok {
		t.Fatalf("message %s not received; got %v", ids[0], byID)
	}
	if d.Exchange != b.exchange || d.RoutingKey != "job.completed" {
		t.Errorf("exchange, key = %q, %q; want %q, job.completed", d.Exchange, d.RoutingKey, b.exchange)
	}
	if d.ContentType != "application/json" || string(d.Body) != `{"job":1}` {
		t.Errorf("content type, body = %q, %q", d.ContentType, d.Body)
	}
	if d.DeliveryMode != amqp.Persistent {
		t.Errorf("delivery mode = %d, want persistent", d.DeliveryMode)
	}
	if !d.Timestamp.Equal(createdAt.Truncate(time.Second)) {
		t.Errorf("timestamp = %v, want created_at %v to the second", d.Timestamp, createdAt)
	}
	wantHeaders := amqp.Table{"s": "x", "i": int64(42), "f": 1.5, "b": true,
		"o": amqp.Table{"deep": []any{int64(1), "two", nil}}}
	if fmt.Sprint(d.Headers) != fmt.Sprint(wantHeaders) {
		t.Errorf("headers = %#v, want %#v", d.Headers, wantHeaders)
	}
	if _, ok := d.Headers["n"]; ok {
		t.Errorf("null header was sent")
	}
	d2 := byID[ids[1]]
	if d2.RoutingKey != "job.started" || string(d2.Body) != "\x00\x01\x02\xff" || d2.ContentType != "" || len(d2.Headers) > 0 {
		t.Errorf("second message = key %q body %q type %q headers %v", d2.RoutingKey, d2.Body, d2.ContentType, d2.Headers)
	}

	select {
	case d := <-b.recv:
		t.Errorf("unexpected message %q (%s)", d.Body, d.RoutingKey)
	case <-time.After(notificationLeeway):
	}
	testenv.WaitFor(t, 5*time.Second, "table to be empty", func() bool {
		live, dead := b.env.Pending(t)
		return live == 0 && dead == 0
	})
}

func TestRelayKeepsOrderPerPartitionKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	start(t, b.config(t))
	// One writer per key, as when writes to an aggregate are serialised by
	// its row lock (concurrent transactions of one key have no order to
	// keep); the keys interleave while the relay runs.
	rowOf, keyOf := b.keyedWriters(t, "agg", 4, 4, 60)
	b.receiveInOrder(t, len(rowOf), rowOf, keyOf)
}
