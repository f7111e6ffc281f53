package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
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
	b.env.WaitRelayIdle(t)

	for i := range 3 {
		begin := time.Now()
		insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "wake", payload: []byte(fmt.Sprint(i))})
		testenv.Receive(t, b.recv, 1, 5*time.Second)
		t.Logf("event %d: commit to receipt %s", i, time.Since(begin))
		b.env.WaitRelayIdle(t)
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
	b.env.WaitRelayIdle(t)
	insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "polled", payload: []byte("p")})
	testenv.Receive(t, b.recv, 1, 5*time.Second)
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
			logs := &testenv.Buffer{}
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

func TestRelayRereadsPasswordFileOnReconnect(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	user := b.env.Name
	if _, err := harness.Rabbitmqctl(ctx, "add_user", user, "first-Pa55"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = harness.Rabbitmqctl(context.Background(), "delete_user", user) })
	if _, err := harness.Rabbitmqctl(ctx, "set_permissions", "-p", "/", user, ".*", ".*", ".*"); err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte("first-Pa55\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs, logger := testenv.BufferedLogger(t)
	cfg := b.config(t)
	cfg.AMQPURL = "amqp://" + user + "@127.0.0.1:5672/"
	cfg.AMQPPasswordFile = pwFile
	cfg.Logger = logger
	start(t, cfg)

	insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "before", payload: []byte("1")})
	testenv.Receive(t, b.recv, 1, 10*time.Second)

	// Rotate the secret, then cut the relay's connection: it must
	// reconnect with the new password from the file.
	if _, err := harness.Rabbitmqctl(ctx, "change_password", user, "second-Pa55"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pwFile, []byte("second-Pa55"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := harness.CloseBrokerConnectionsNamed(ctx, cfg.Name+"@", "test closes it"); err != nil || n != 1 {
		t.Fatalf("closed %d relay connections (%v), want 1", n, err)
	}
	insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "after", payload: []byte("2")})
	if d := testenv.Receive(t, b.recv, 1, 15*time.Second)[0]; d.RoutingKey != "after" {
		t.Errorf("received %s, want after", d.RoutingKey)
	}
	for _, secret := range []string{"first-Pa55", "second-Pa55"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("logs contain password %s", secret)
		}
	}
}

func TestRelayFailsOverToNextBrokerNode(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config(t)
	// The first node refuses connections; the second is the real broker.
	cfg.AMQPURL = "amqp://guest:guest@127.0.0.1:1/, " + testenv.AMQPURL()
	start(t, cfg)
	insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "k", payload: []byte("1")})
	testenv.Receive(t, b.recv, 1, 15*time.Second)
}

func TestRelayStandbyTakesOver(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfgA, cfgB := b.config(t), b.config(t)
	cfgA.Name, cfgB.Name = b.env.Name+"-a", b.env.Name+"-b"
	stopA := start(t, cfgA)
	b.env.WaitRelayIdle(t)
	start(t, cfgB)

	st := readStatus(t, b)
	if st.Leader == nil || !strings.HasPrefix(st.Leader.ApplicationName, cfgA.Name+"@") {
		t.Fatalf("leader = %+v, want relay a", st.Leader)
	}
	insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "one", payload: []byte("1")})
	testenv.Receive(t, b.recv, 1, 10*time.Second)

	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	testenv.WaitFor(t, 5*time.Second, "relay b to lead", func() bool {
		st := readStatus(t, b)
		return st.Leader != nil && strings.HasPrefix(st.Leader.ApplicationName, cfgB.Name+"@")
	})
	t.Logf("takeover after a clean stop: %s", time.Since(stopped))
	insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "two", payload: []byte("2")})
	if d := testenv.Receive(t, b.recv, 1, 10*time.Second)[0]; d.RoutingKey != "two" {
		t.Errorf("received %s, want two", d.RoutingKey)
	}
}

func readStatus(t *testing.T, b *testBundle) relay.Status {
	t.Helper()
	st, err := relay.ReadStatus(context.Background(), b.env.Pool, b.env.Table)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
