package recipes_test

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
)

// startRelay runs a relay on e's table until the test ends.
func startRelay(t *testing.T, e *testenv.Env) {
	t.Helper()
	r, err := relay.New(relay.Config{
		DatabaseURL:     e.URL,
		AMQPURL:         testenv.AMQPURL(),
		Table:           e.Table,
		PollInterval:    time.Second,
		RetryBackoff:    20 * time.Millisecond,
		RetryBackoffMax: 100 * time.Millisecond,
		Name:            e.Name,
		Logger:          testenv.Logger(t),
	})
	if err != nil {
		t.Fatalf("relay.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("relay.Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("relay did not stop")
		}
	})
}
