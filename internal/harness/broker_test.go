package harness

import (
	"context"
	"crypto/rand"
	"net"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestBrokerConnections finds a connection of its own, dialled by
// DialAMQP, by name among the broker's, with the peer port it dialled from, and closes it by name:
// only its own, whatever else the shared broker serves.
func TestBrokerConnections(t *testing.T) {
	t.Parallel()
	name := "harness-" + t.Name() + "-" + rand.Text()[:8]
	conn, err := dialAMQP(testenv.AMQPURL(), "", name)
	if err != nil {
		t.Fatalf("connect to RabbitMQ at OUTBOX_TEST_AMQP_URL (is it running? `make services`): %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var found BrokerConnection
	err = Poll(ctx, 500*time.Millisecond, func() bool {
		conns, err := BrokerConnections(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if c.Name == name {
				found = c
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("connection %s not listed: %v", name, err)
	}
	if want := conn.LocalAddr().(*net.TCPAddr).Port; found.PeerPort != want || found.PID == "" {
		t.Errorf("listed as %+v; want peer port %d and a pid", found, want)
	}

	n, err := CloseBrokerConnectionsNamed(ctx, name, "harness test closes its own connection")
	if err != nil || n != 1 {
		t.Fatalf("CloseBrokerConnectionsNamed = %d, %v; want 1, nil", n, err)
	}
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("the broker did not close the connection")
	}
}
