package relay

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// The publisher's goroutines (the blocked follower, the watchdog, Close's
// timer) against the loop's, connecting and closing over and over while
// blocked notifications arrive and watchdogs break connections: run with
// -race, any field two of them touch without an owner shows up.
func TestPublisherConnectCloseBlockedRace(t *testing.T) {
	t.Parallel()
	uri, err := amqp.ParseURI(testenv.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Logger: testenv.Logger(t), ConfirmTimeout: time.Second}.withDefaults()
	p := newPublisher(cfg, []amqp.URI{uri}, t.Name())
	defer p.Close()
	for i := range 25 {
		ctx, cancel := context.WithCancel(context.Background())
		if err := p.Connect(ctx); err != nil {
			cancel()
			t.Fatalf("connect %d: %v", i, err)
		}
		stop := p.Watch(ctx)
		for k := range 10 {
			// What the library delivers when the broker raises and clears
			// a resource alarm.
			p.blockedCh <- amqp.Blocking{Active: k%2 == 0, Reason: "test alarm"}
			_ = p.Blocked()
		}
		if i%2 == 1 {
			// The watchdog breaks the socket while the loop closes.
			cancel()
		}
		p.Close()
		stop()
		cancel()
		if p.Connected() || p.conn != nil {
			t.Fatalf("round %d: still connected after Close", i)
		}
	}
	// The last notification cleared the alarm; a new connection starts
	// unblocked whatever the last one said.
	if err := p.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.blockedCh <- amqp.Blocking{Active: true, Reason: "test alarm"}
	testenv.WaitFor(t, 5*time.Second, "blocked reported", p.Blocked)
	p.Close()
	if err := p.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p.Blocked() {
		t.Error("a new connection starts blocked")
	}
}
