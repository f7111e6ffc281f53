package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

func TestRelayParksBadRowsWithoutStallingOthers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	unrouted := b.env.Exchange(t, "unrouted", "direct") // no queue bound

	ids := insert(t, b.env.Pool, b,
		row{exchange: b.exchange, key: "good.1", payload: []byte("1")},
		row{exchange: b.env.Name + ".missing", key: "x", payload: []byte("missing exchange")},
		row{exchange: b.exchange, key: "good.2", payload: []byte("2")},
		row{exchange: unrouted, key: "nobody", payload: []byte("unroutable")},
		row{exchange: b.exchange, key: "good.3", payload: []byte("3")},
	)
	cfg := b.config(t)
	cfg.MaxAttempts = 3
	start(t, cfg)

	got := testenv.Receive(t, b.recv, 3, 10*time.Second)
	for _, d := range got {
		if !strings.HasPrefix(d.RoutingKey, "good.") {
			t.Errorf("unexpected message %s", d.RoutingKey)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "both bad rows to be dead", func() bool {
		_, dead := b.env.Pending(t)
		return dead == 2
	})
	for i, want := range map[int]string{1: `exchange "` + b.env.Name + `.missing" does not exist`, 3: "312 NO_ROUTE"} {
		var attempts int
		var lastErr string
		err := b.env.Pool.QueryRow(ctx, "select attempts, last_error from "+b.env.Table.Ident()+" where message_id = $1", ids[i]).Scan(&attempts, &lastErr)
		if err != nil {
			t.Fatal(err)
		}
		if attempts != 3 || !strings.Contains(lastErr, want) {
			t.Errorf("row %d: attempts %d, last_error %q; want 3 and %q", i, attempts, lastErr, want)
		}
	}
	if live, _ := b.env.Pending(t); live != 0 {
		t.Errorf("%d live rows left", live)
	}
}

func TestRelayHoldsKeyBehindBackingOffRow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	missing := b.env.Name + ".missing"
	insert(t, b.env.Pool, b,
		row{exchange: missing, key: "k1.first", partition: ptr("k1"), payload: []byte("k1 first")},
		row{exchange: b.exchange, key: "k1.second", partition: ptr("k1"), payload: []byte("k1 second")},
		row{exchange: b.exchange, key: "k2.only", partition: ptr("k2"), payload: []byte("k2")},
	)
	cfg := b.config(t)
	cfg.MaxAttempts = 3
	cfg.RetryBackoff, cfg.RetryBackoffMax = 300*time.Millisecond, 300*time.Millisecond
	start(t, cfg)

	// k2 is not held up; k1.second waits until k1.first is dead.
	first := testenv.Receive(t, b.recv, 1, 5*time.Second)[0]
	if first.RoutingKey != "k2.only" {
		t.Fatalf("first message %s, want k2.only", first.RoutingKey)
	}
	second := testenv.Receive(t, b.recv, 1, 10*time.Second)[0]
	if second.RoutingKey != "k1.second" {
		t.Fatalf("second message %s, want k1.second", second.RoutingKey)
	}
	var dead bool
	if err := b.env.Pool.QueryRow(context.Background(), "select dead_at is not null from "+b.env.Table.Ident()+" where routing_key = 'k1.first'").Scan(&dead); err != nil {
		t.Fatal(err)
	}
	if !dead {
		t.Errorf("k1.second was published before k1.first was parked")
	}
}

func TestRelayNotifyWakesIdleRelay(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config(t)
	cfg.PollInterval = time.Minute // only a NOTIFY can deliver in time
	start(t, cfg)
	waitIdle(t, b)

	for i := range 3 {
		begin := time.Now()
		insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "wake", payload: []byte(fmt.Sprint(i))})
		testenv.Receive(t, b.recv, 1, 5*time.Second)
		t.Logf("event %d: commit to receipt %s", i, time.Since(begin))
		waitIdle(t, b)
	}
}

func TestRelayPollsWithoutNotify(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.env.Pool.Exec(ctx, "alter table "+b.env.Table.Ident()+" disable trigger "+b.env.Table.Local("notify")); err != nil {
		t.Fatal(err)
	}
	cfg := b.config(t)
	cfg.PollInterval = 200 * time.Millisecond
	start(t, cfg)
	waitIdle(t, b)
	insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "polled", payload: []byte("p")})
	testenv.Receive(t, b.recv, 1, 5*time.Second)
}

// waitIdle waits until the relay has announced that it sleeps on LISTEN.
func waitIdle(t *testing.T, b *testBundle) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, "relay to wait for notifications", func() bool {
		var waiting bool
		err := b.env.Pool.QueryRow(context.Background(), "select coalesce(bool_or(waiting), false) from "+b.env.Table.Derived("relay_state")).Scan(&waiting)
		return err == nil && waiting
	})
}

func TestRelayRestartLosesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const total = 3000

	// A producer writes steadily while the relay is stopped and started
	// three times.
	var mu sync.Mutex
	sent := map[string]bool{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < total; i += 10 {
			rows := make([]row, 10)
			for j := range rows {
				rows[j] = row{exchange: b.exchange, key: "stream", payload: []byte(fmt.Sprint(i + j))}
			}
			ids := insert(t, b.env.Pool, b, rows...)
			mu.Lock()
			for _, id := range ids {
				sent[id] = true
			}
			mu.Unlock()
		}
	}()
	cfg := b.config(t)
	cfg.BatchSize = 50
	received := map[string]int{}
	for range 3 {
		stop := start(t, cfg)
		for _, d := range testenv.Receive(t, b.recv, 200, 10*time.Second) {
			received[d.MessageId]++
		}
		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
	<-done
	start(t, cfg)
	deadline := time.After(30 * time.Second)
	for len(received) < total {
		select {
		case d := <-b.recv:
			received[d.MessageId]++
		case <-deadline:
			t.Fatalf("received %d of %d distinct messages", len(received), total)
		}
	}
	dups := 0
	for id, n := range received {
		if !sent[id] {
			t.Errorf("received unknown message %s", id)
		}
		dups += n - 1
	}
	t.Logf("%d messages, %d duplicates", total, dups)
	testenv.WaitFor(t, 5*time.Second, "table to be empty", func() bool {
		live, dead := b.env.Pending(t)
		return live == 0 && dead == 0
	})
}

func TestRelayRetriesBadBrokerCredentials(t *testing.T) {
	t.Parallel()
	// The text handler escapes quotes: wants are written as it prints them.
	for name, tc := range map[string]struct{ url, secret, want string }{
		"vhost": {"amqp://guest:guest@127.0.0.1:5672/no-such-vhost", ":guest@", `check that vhost \"no-such-vhost\" exists`},
		"user":  {"amqp://nobody:s3cret-pw@127.0.0.1:5672/", "s3cret-pw", `check user \"nobody\" and its password`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			logs := &syncBuffer{}
			cfg := b.config(t)
			cfg.AMQPURL = tc.url
			cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
			stop := start(t, cfg)
			testenv.WaitFor(t, 15*time.Second, "two failed connects", func() bool {
				return strings.Count(logs.String(), "broker connect failed") >= 2
			})
			if err := stop(); err != nil {
				t.Fatalf("Run returned %v; want nil after a clean stop", err)
			}
			out := logs.String()
			if !strings.Contains(out, tc.want) {
				t.Errorf("logs do not say %s:\n%s", tc.want, out)
			}
			if strings.Contains(out, tc.secret) {
				t.Errorf("logs contain the password:\n%s", out)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
