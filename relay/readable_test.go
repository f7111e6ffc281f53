package relay

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// readable agrees with the client library consumers use: each message it
// lets through reaches an amqp091-go consumer, and each it refuses closes
// the consumer's connection. Should an upgrade of amqp091-go move its
// limits, this test says so.
func TestReadableAgreesWithConsumers(t *testing.T) {
	t.Parallel()
	name := testenv.UniqueName(t)
	pub, err := testenv.AMQPConn(t, name+".pub").Channel()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		headers amqp.Table
	}{
		{"tables 32 levels deep", nested(32, table)},
		{"tables 33 levels deep", nested(33, table)},
		{"arrays 32 levels deep", nested(32, array)},
		{"arrays 33 levels deep", nested(33, array)},
		{"8192 headers", wide(8192)},
		{"8193 headers", wide(8193)},
		{"nested table of 8193 entries", amqp.Table{"a": wide(8193)}},
		{"array of 8192 voids", amqp.Table{"a": make([]any, 8192)}},
		{"array of 8193 voids", amqp.Table{"a": make([]any, 8193)}},
	} {
		q, err := pub.QueueDeclare(name+"."+tc.name, false, true, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.PublishWithContext(context.Background(), "", q.Name, false, false, amqp.Publishing{Headers: tc.headers}); err != nil {
			t.Fatalf("%s: publish: %v", tc.name, err)
		}
		conn := testenv.AMQPConn(t, name+"."+tc.name)
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		d, err := ch.Consume(q.Name, "", true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := readable(tc.headers)
		select {
		case _, ok := <-d: // closed with the connection
			if ok && want != nil {
				t.Errorf("%s: a consumer read it; readable said %v", tc.name, want)
			}
			if !ok && want == nil {
				t.Errorf("%s: the consumer's connection closed (%v); readable let it through", tc.name, <-closed)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: neither delivered nor refused within 10s", tc.name)
		}
		_, _ = pub.QueueDelete(q.Name, false, false, false)
	}
}
