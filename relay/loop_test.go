package relay

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// The loop's decisions, driven through runOnce with fakes of its seams
// (fakes_test.go): no server, no network, no sleep.

type loopBundle struct {
	l      *loop
	j      *journal
	store  *fakeStore
	pub    *fakePublisher
	lis    *fakeListener
	clock  *fakeClock
	logs   *testenv.Buffer
	resets int
}

// setupLoop returns a loop whose listener and broker connect at once and
// whose relay becomes the leader; the table is empty.
func setupLoop(t *testing.T) *loopBundle {
	t.Helper()
	logs, logger := testenv.BufferedLogger(t)
	cfg := Config{BatchSize: 3, PollInterval: time.Second, Logger: logger}.withDefaults()
	j := &journal{}
	b := &loopBundle{j: j, logs: logs, clock: &fakeClock{now: time.Unix(1000, 0)},
		pub: &fakePublisher{j: j}}
	b.store = &fakeStore{j: j, clock: b.clock}
	b.lis = &fakeListener{j: j, lead: true, clock: b.clock}
	r := &Relay{cfg: cfg, log: logger, metrics: newMetrics(prometheus.NewRegistry()),
		claimAgeMax: deadSessionDefault.claimAgeMax()}
	b.l = &loop{Relay: r, store: b.store, pub: b.pub, lis: b.lis, clock: b.clock,
		vac: newVacuumer(nil, "outbox", 0, logger), prog: &progress{}, channel: "outbox",
		idle: make(chan struct{}, 1), resetPool: func() { b.resets++ }}
	return b
}

// step runs runOnce under a context that is not done.
func (b *loopBundle) step(t *testing.T) step {
	t.Helper()
	return b.l.runOnce(context.Background(), context.Background())
}

// steps runs runOnce n times and returns what each did.
func (b *loopBundle) steps(t *testing.T, n int) []step {
	t.Helper()
	var out []step
	for range n {
		out = append(out, b.step(t))
	}
	return out
}

// since returns the journal entries after the first n.
func (b *loopBundle) since(n int) []string { return slices.Clone((*b.j)[n:]) }

// lastPID is the leader lock session the store was given last.
func lastPID(b *loopBundle) int32 {
	if len(b.store.leader) == 0 {
		return 0
	}
	return b.store.leader[len(b.store.leader)-1]
}

func wantSteps(t *testing.T, got []step, want ...step) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("steps %q, want %q", got, want)
	}
}

func wantJournal(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("calls:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func wantLog(t *testing.T, b *loopBundle, line string, times int) {
	t.Helper()
	if n := strings.Count(b.logs.String(), line); n != times {
		t.Errorf("log %q %d times, want %d; logs:\n%s", line, n, times, b.logs.String())
	}
}

// Sparse rows: the leader arms the wake-up flag at once and sleeps on
// LISTEN between batches, the flag staying up: every commit wakes it. Its
// first sleep ends at the look that follows a gain (lookSoon).
func TestLoopWakeUpSparse(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	wantSteps(t, b.steps(t, 3), stepAnnounce, stepWait, stepWait)
	wantJournal(t, b.since(0), "member true", "take 0", "fence [0]", "waiting off", "claim 0", "arm", "claim 0", "wait 100ms", "claim 0", "wait 1s")
	select {
	case <-b.l.idle:
	default:
		t.Error("the gauges were not told the relay went idle")
	}
	n := len(*b.j)
	b.store.claims = []fakeClaim{{rows: rows("1", "2"), snapshot: "40:42:41"}}
	wantSteps(t, b.steps(t, 1), stepBusy)
	wantJournal(t, b.since(n), "claim [1 2]", "send [1 2]", "settle [1 2]", "wait 1s")
	if b.lis.claimed != "40:42:41" {
		t.Errorf("the listener was given snapshot %q, want the claim's: notifications of rows it took would wake the relay", b.lis.claimed)
	}
	if len(b.clock.sleeps) != 0 {
		t.Errorf("slept %v: a sparse leader sleeps on LISTEN only", b.clock.sleeps)
	}
}

// A drain that stops for a look with its last claim full looks and drains
// again at once: asleep on LISTEN, the relay would leave the rows waiting
// for the poll, since their commits notified before it slept.
func TestLoopLookDueMidDrainDoesNotSleep(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	wantSteps(t, b.steps(t, 1), stepAnnounce) // sparse: armed, asleep between batches
	n := len(*b.j)
	b.store.claims = []fakeClaim{
		{rows: rows("1", "2", "3"), full: true, took: lookAlone}, // a look falls due meanwhile
		{rows: rows("4", "5"), full: false},
	}
	wantSteps(t, b.steps(t, 2), stepBusy, stepBusy)
	wantJournal(t, b.since(n), "claim [1 2 3]", "send [1 2 3]", "settle [1 2 3]",
		"claim [4 5]", "send [4 5]", "settle [4 5]", "wait 1s")

	// A full claim followed by an empty one leaves nothing waiting: the
	// relay sleeps.
	n = len(*b.j)
	b.store.claims = []fakeClaim{{rows: rows("6", "7", "8"), full: true}}
	wantSteps(t, b.steps(t, 1), stepBusy)
	wantJournal(t, b.since(n), "claim [6 7 8]", "send [6 7 8]", "claim 0", "settle [6 7 8]", "wait 1s")
}

// While rows come sparsely and go out at once, the gauges are not told
// after every batch that the relay ran out of rows; after rows that had
// waited (a backlog), they are.
func TestLoopIdleSignalAfterBacklogOnly(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.steps(t, 2) // armed, asleep
	<-b.l.idle    // told when it first went to sleep
	fresh := rows("1")
	fresh[0].CreatedAt = b.clock.now
	b.store.claims = []fakeClaim{{rows: fresh}}
	b.steps(t, 1)
	select {
	case <-b.l.idle:
		t.Error("told the gauges after rows published at once")
	default:
	}
	b.store.claims = []fakeClaim{{rows: rows("2")}} // created long ago
	b.steps(t, 1)
	select {
	case <-b.l.idle:
	default:
		t.Error("not told the gauges after a backlog")
	}
}

// Arming waits for writers that inserted without notifying; while one is
// still in its transaction, the leader stays awake and looks again.
func TestLoopArmWaitsForWriters(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.store.armed = []bool{false, false, true}
	wantSteps(t, b.steps(t, 4), stepLinger, stepLinger, stepAnnounce, stepWait)
	wantJournal(t, b.since(0), "member true", "take 0", "fence [0]", "waiting off", "claim 0", "arm: writers in flight", "wait 2ms",
		"claim 0", "arm: writers in flight", "wait 4ms", "claim 0", "arm", "claim 0", "wait 94ms")
}

// A batch on the wire that holds rows back behind an earlier row of their
// key (here, one claimed without its payload) stops the claims until it is
// settled: the next claim takes them, in id order.
func TestLoopClaimWaitsForHeldRows(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.step(t)
	n := len(*b.j)
	first := rows("1a", "2b", "3b")
	first[1].deferred = true
	b.store.claims = []fakeClaim{{rows: first, full: true}, {rows: rows("2b", "3b")}}
	b.step(t)
	wantJournal(t, b.since(n), "claim [1 2 3]", "send [1]", "settle [1 2 3]", "claim [2 3]", "send [2 3]", "settle [2 3]",
		"wait 100ms")
	if s := b.store.settled[0]; s[0].Outcome != Acked || s[1].Reason != reasonHeld || s[2].Reason != reasonHeld {
		t.Errorf("first batch settled as %v", s)
	}
}

// Leadership: a standby waits and tries again; a new leader fences off the
// claims of the leader before it, records its lock session, clears a wake-up
// flag left set and claims; losing the listener loses leadership.
func TestLoopLeadership(t *testing.T) {
	t.Parallel()
	t.Run("standby", func(t *testing.T) {
		t.Parallel()
		b := setupLoop(t)
		b.lis.lead = false
		wantSteps(t, b.steps(t, 2), stepStandby, stepStandby)
		wantJournal(t, b.since(0), "member true", "wait "+standbyInterval.String(), "wait "+standbyInterval.String())
		if b.store.fences != 0 || lastPID(b) != 0 || testutil.ToFloat64(b.l.metrics.leader) != 0 {
			t.Errorf("a standby fenced (%d) or led (%v)", b.store.fences, b.store.leader)
		}
		b.lis.lead = true
		wantSteps(t, b.steps(t, 1), stepAnnounce)
		wantLog(t, b, "leadership gained", 1)
	})
	t.Run("gained", func(t *testing.T) {
		t.Parallel()
		b := setupLoop(t)
		wantSteps(t, b.steps(t, 2), stepAnnounce, stepWait)
		wantJournal(t, b.since(0), "member true", "take 0", "fence [0]", "waiting off", "claim 0", "arm", "claim 0", "wait 100ms")
		if lastPID(b) != 4242 || b.l.prog.leaderPID.Load() != 4242 {
			t.Errorf("leader pid given to the store %v, to the gauges %d; want the listener's 4242", b.store.leader, b.l.prog.leaderPID.Load())
		}
		if testutil.ToFloat64(b.l.metrics.leader) != 1 || !b.l.ready.Load() {
			t.Errorf("outbox_leader %v, ready %t", testutil.ToFloat64(b.l.metrics.leader), b.l.ready.Load())
		}
	})
	t.Run("fence not cleared", func(t *testing.T) {
		t.Parallel()
		b := setupLoop(t)
		b.store.fenceErr = context.DeadlineExceeded
		wantSteps(t, b.steps(t, 2), stepStandby, stepStandby)
		if b.l.leader || lastPID(b) != 0 || b.store.claimed != 0 {
			t.Errorf("led without the fence: leader %t, pids %v, claims %d", b.l.leader, b.store.leader, b.store.claimed)
		}
		wantLog(t, b, "previous owner's claims did not settle in time", 2)
	})
	for _, others := range []bool{false, true} {
		t.Run(fmt.Sprintf("lost with the listener, another member: %t", others), func(t *testing.T) {
			t.Parallel()
			b := setupLoop(t)
			b.step(t)
			b.lis.connected = false
			b.lis.connectErrs = []error{context.DeadlineExceeded}
			wantSteps(t, b.steps(t, 1), stepNoListener)
			if !slices.Contains(b.store.leader, 4242) || lastPID(b) != 0 || b.l.prog.leaderPID.Load() != 0 {
				t.Errorf("leader pids %v, gauges %d; want 4242 then 0", b.store.leader, b.l.prog.leaderPID.Load())
			}
			if testutil.ToFloat64(b.l.metrics.leader) != 0 || testutil.ToFloat64(b.l.metrics.partitionsOwned) != 0 {
				t.Error("outbox_leader or outbox_partitions_owned still 1")
			}
			wantLog(t, b, "leadership lost", 1)
			wantLog(t, b, "listener connect failed", 1)
			// Connected again, alone it leads at once, after the fence;
			// with a member of a lower pid (ranked first) it stands by:
			// that one's target is the one partition.
			if others {
				b.lis.others = []int32{17}
				wantSteps(t, b.steps(t, 3), stepNoListener, stepStandby, stepStandby)
				if b.store.fences != 1 || len(b.lis.held) != 0 {
					t.Errorf("fences %d, held %v: want the first fence only, nothing held", b.store.fences, b.lis.held)
				}
				return
			}
			n := len(*b.j)
			wantSteps(t, b.steps(t, 2), stepNoListener, stepAnnounce)
			if calls := b.since(n); b.store.fences != 2 || !slices.Contains(calls, "fence [0]") {
				t.Errorf("fences %d, want 2; calls %q", b.store.fences, calls)
			}
		})
	}
	t.Run("lock query fails", func(t *testing.T) {
		t.Parallel()
		b := setupLoop(t)
		b.lis.connected = true
		b.lis.leadErr = context.DeadlineExceeded
		wantSteps(t, b.steps(t, 1), stepStandby)
		if b.l.leader || b.lis.connected {
			t.Error("a failed lock query left the relay leading or the listener up")
		}
		wantLog(t, b, "listener connection lost", 1)
	})
}
