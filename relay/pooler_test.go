package relay_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
)

// Behind PgBouncer in session mode, with its default configuration (no
// ignore_startup_parameters): two relays, one leads, rows drain, a NOTIFY
// wakes the idle leader, and the standby takes over when it stops.
func TestRelayThroughSessionPooler(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pb := testenv.StartPgBouncer(t, testenv.PgBouncerOptions{PoolMode: "session"})
	cfgA, cfgB := b.config(t), b.config(t)
	for i, c := range []*relay.Config{&cfgA, &cfgB} {
		c.DatabaseURL = pb.URL
		c.Name = fmt.Sprintf("%s-%c", b.env.Name, 'a'+i)
		c.PollInterval = time.Minute // only a NOTIFY can wake them in time
	}
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	cfgA.Registerer, cfgB.Registerer = regA, regB
	stopA := start(t, cfgA)
	b.env.WaitRelayIdle(t)
	start(t, cfgB)

	const n = 2000
	for i := 0; i < n; i += 100 {
		b.insertBacklog(t, 100)
	}
	if dup := b.receiveAll(t, n, 30*time.Second); dup != 0 {
		t.Errorf("%d duplicates", dup)
	}
	if a, bb := value(gather(t, regA)["outbox_leader"]), value(gather(t, regB)["outbox_leader"]); a != 1 || bb != 0 {
		t.Fatalf("outbox_leader: a %v, b %v; want a alone", a, bb)
	}
	st := readStatus(t, b)
	if st.Leader == nil || !strings.HasPrefix(st.Leader.ApplicationName, cfgA.Name+"@") {
		t.Fatalf("leader = %+v, want relay a", st.Leader)
	}

	b.env.WaitRelayIdle(t)
	insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "woken", payload: []byte("1")})
	testenv.Receive(t, b.recv, 1, 5*time.Second)

	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "relay b to lead", func() bool {
		return value(gather(t, regB)["outbox_leader"]) == 1
	})
	insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "after", payload: []byte("2")})
	if d := testenv.Receive(t, b.recv, 1, 10*time.Second)[0]; d.RoutingKey != "after" {
		t.Errorf("received %s, want after", d.RoutingKey)
	}
}

// Behind PgBouncer in transaction mode, whatever its pool size, no relay
// leads: each logs why and what to do, and nothing is published.
func TestRelayRefusesTransactionPooler(t *testing.T) {
	t.Parallel()
	for _, size := range []int{1, 10} {
		t.Run(fmt.Sprintf("pool_size=%d", size), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			pb := testenv.StartPgBouncer(t, testenv.PgBouncerOptions{PoolMode: "transaction", PoolSize: size})
			b.insertBacklog(t, 50)
			var logs []*testenv.Buffer
			var regs []*prometheus.Registry
			for i := range 2 {
				buf, log := b.logged(t)
				cfg := b.config(t)
				cfg.DatabaseURL, cfg.Logger = pb.URL, log
				cfg.Name = fmt.Sprintf("%s-%d", b.env.Name, i)
				cfg.Registerer = prometheus.NewRegistry()
				regs = append(regs, cfg.Registerer.(*prometheus.Registry))
				logs = append(logs, buf)
				start(t, cfg)
			}
			for i, buf := range logs {
				testenv.WaitFor(t, 30*time.Second, fmt.Sprintf("relay %d to name the pooler", i), func() bool {
					return strings.Contains(buf.String(), "reason=pooler")
				})
				for _, want := range []string{"relay cannot lead", "transaction-mode pooler", "session-mode pool"} {
					if !strings.Contains(buf.String(), want) {
						t.Errorf("relay %d: log lacks %q", i, want)
					}
				}
			}
			select {
			case d := <-b.recv:
				t.Fatalf("published %s through a transaction pooler", d.MessageId)
			case <-time.After(notificationLeeway):
			}
			for i, reg := range regs {
				if v := value(gather(t, reg)["outbox_leader"]); v != 0 {
					t.Errorf("relay %d: outbox_leader = %v", i, v)
				}
			}
			if st := readStatus(t, b); st.Leader != nil || st.Pending != 50 {
				t.Errorf("leader %+v, pending %d; want none and 50", st.Leader, st.Pending)
			}
		})
	}
}

// A session pool too small for the relay's sessions: the relay says that it
// waits, and why it will not lead, instead of waiting without a word.
func TestRelaySaysWhenSessionPoolIsFull(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pb := testenv.StartPgBouncer(t, testenv.PgBouncerOptions{PoolMode: "session", PoolSize: 1})
	buf, log := b.logged(t)
	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.DatabaseURL, cfg.Logger, cfg.Registerer = pb.URL, log, reg
	start(t, cfg)
	testenv.WaitFor(t, 60*time.Second, "the pool_wait error", func() bool {
		return strings.Contains(buf.String(), "reason=pool_wait")
	})
	for _, want := range []string{"waiting for a database connection", "opening the LISTEN session took over", "6 sessions"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if v := value(gather(t, reg)["outbox_db_acquire_waits_total"]); v < 1 {
		t.Errorf("outbox_db_acquire_waits_total = %v, want at least 1", v)
	}
	if v := value(gather(t, reg)["outbox_leader"]); v != 0 {
		t.Errorf("outbox_leader = %v", v)
	}
}
