package relay

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// journalHas counts the entries of got that begin with prefix.
func journalHas(got []string, prefix string) int {
	n := 0
	for _, e := range got {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

func lastOwned(b *loopBundle) []int {
	if len(b.store.owned) == 0 {
		return nil
	}
	return b.store.owned[len(b.store.owned)-1]
}

// A joiner takes its target of the free partitions, fences them all, and
// claims for them only; a steady group moves nothing after that, however
// many looks.
func TestLoopShareJoin(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.lis.partitions = 12
	b.lis.others = []int32{1, 2} // ranked before 4242
	b.lis.foreign = map[int]int32{0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2, 7: 2}
	b.step(t)
	wantJournal(t, b.since(0)[:7], "member true", "take 8", "take 9", "take 10", "take 11", "fence [8 9 10 11]", "waiting off")
	if got := lastOwned(b); !slices.Equal(got, []int{8, 9, 10, 11}) || lastPID(b) != 4242 {
		t.Errorf("store owns %v as %d, want [8 9 10 11] as 4242", got, lastPID(b))
	}
	if b.store.warmed != 1 {
		t.Errorf("pool warmed %d times on gaining leadership, want 1", b.store.warmed)
	}
	if testutil.ToFloat64(b.l.metrics.partitionsOwned) != 4 ||
		testutil.ToFloat64(b.l.metrics.partitionChanges.WithLabelValues("gained")) != 4 {
		t.Errorf("outbox_partitions_owned %v, gained %v", testutil.ToFloat64(b.l.metrics.partitionsOwned),
			testutil.ToFloat64(b.l.metrics.partitionChanges.WithLabelValues("gained")))
	}
	n := len(*b.j)
	for range 50 {
		b.step(t) // each waits a poll interval: looks come due
	}
	if got := b.since(n); journalHas(got, "take") != 0 || journalHas(got, "release") != 0 || journalHas(got, "fence") != 0 {
		t.Errorf("a steady group moved partitions: %q", got)
	}
}

// Relays that join a relay owning every partition get their share: it
// releases its highest partitions, all at once (nothing is in flight
// between steps), before it claims again, and keeps claiming for the rest.
func TestLoopShareReleasesToJoiners(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.lis.partitions = 12
	b.step(t)
	if got := lastOwned(b); len(got) != 12 {
		t.Fatalf("alone, the relay owns %v", got)
	}
	b.lis.others = []int32{1, 2}
	b.lis.changed = true // their joining notified
	n := len(*b.j)
	b.step(t)
	got := b.since(n)
	if journalHas(got, "release") != 8 || !strings.HasPrefix(got[0], "release 4") {
		t.Errorf("calls %q, want partitions 4 to 11 released first", got)
	}
	if owned := lastOwned(b); !slices.Equal(owned, []int{0, 1, 2, 3}) {
		t.Errorf("store owns %v, want [0 1 2 3]", owned)
	}
	if testutil.ToFloat64(b.l.metrics.partitionChanges.WithLabelValues("released")) != 8 {
		t.Error("released partitions not counted")
	}
}

// A relay told its P stops when migrate changes the table's; one that
// follows the table starts over with the new P.
func TestLoopSharePartitionsChanged(t *testing.T) {
	t.Parallel()
	t.Run("told", func(t *testing.T) {
		t.Parallel()
		b := setupLoop(t)
		b.l.cfg.Partitions = 12
		b.lis.partitions = 12
		b.step(t)
		b.lis.partitions = 6
		b.l.nextLook = b.clock.now
		b.step(t)
		if b.l.fatal == nil || !strings.Contains(b.l.fatal.Error(), "from 12 to 6") ||
			!strings.Contains(b.l.fatal.Error(), "OUTBOX_PARTITIONS=6") {
			t.Errorf("fatal %v, want one naming both and the fix", b.l.fatal)
		}
		if err := b.l.run(context.Background(), context.Background()); err != b.l.fatal {
			t.Errorf("run returned %v", err)
		}
	})
	t.Run("following", func(t *testing.T) {
		t.Parallel()
		b := setupLoop(t)
		b.lis.partitions = 12
		b.step(t)
		b.lis.partitions = 6
		b.l.nextLook = b.clock.now
		wantSteps(t, b.steps(t, 2), stepStandby, stepAnnounce)
		if b.l.fatal != nil || len(lastOwned(b)) != 6 {
			t.Errorf("fatal %v, owned %v; want the 6 new partitions", b.l.fatal, lastOwned(b))
		}
		wantLog(t, b, "the table's partitions changed", 1)
	})
}

// Without a broker for brokerGone, a relay gives its partitions up and
// leaves the members; with one again, it joins and takes its share.
func TestLoopShareBrokerGone(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.lis.partitions = 4
	b.step(t)
	b.pub.connected = false
	errDown := errors.New("connection refused")
	for range 10 {
		b.pub.connectErrs = append(b.pub.connectErrs, errDown)
	}
	for b.clock.now.Sub(b.l.noBrokerSince) < brokerGone || b.l.noBrokerSince.IsZero() {
		if got := b.step(t); got != stepNoBroker {
			t.Fatalf("step %q without a broker", got)
		}
	}
	// The back-off between connects (up to 10s) does not delay the leave.
	if over := b.clock.now.Sub(b.l.noBrokerSince) - brokerGone; over > 0 {
		t.Errorf("left %s after brokerGone", over)
	}
	b.step(t)
	if b.lis.member || len(b.lis.held) != 0 || len(lastOwned(b)) != 0 || b.l.leader {
		t.Errorf("member %t, held %v, owned %v: want none", b.lis.member, b.lis.held, lastOwned(b))
	}
	wantLog(t, b, "gave partitions up and left the members", 1)
	if testutil.ToFloat64(b.l.metrics.leader) != 0 || b.l.prog.leaderPID.Load() != 0 {
		t.Errorf("outbox_leader %v, leader pid for the gauges %d after leaving: want 0, 0",
			testutil.ToFloat64(b.l.metrics.leader), b.l.prog.leaderPID.Load())
	}
	b.pub.connectErrs = nil
	b.step(t)
	if !b.lis.member || len(lastOwned(b)) != 4 {
		t.Errorf("broker back: member %t, owned %v", b.lis.member, lastOwned(b))
	}
}

// A relay that gains partitions while it claims for others tries their
// fence briefly at each look and claims for its own meanwhile.
func TestLoopShareFenceDoesNotStallOwnPartitions(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.lis.partitions = 4
	b.lis.others = []int32{1}
	b.lis.foreign = map[int]int32{2: 1, 3: 1}
	b.step(t)
	if got := lastOwned(b); !slices.Equal(got, []int{0, 1}) {
		t.Fatalf("owns %v", got)
	}
	// The other relay dies with a batch on the wire: its partitions are
	// free, their fence does not pass yet.
	b.lis.others, b.lis.foreign = nil, nil
	b.store.fenceErr = context.DeadlineExceeded
	b.l.nextLook = b.clock.now
	n := len(*b.j)
	b.step(t)
	got := b.since(n)
	if journalHas(got, "take") != 2 || journalHas(got, "fence [2 3]") != 1 || journalHas(got, "claim") == 0 {
		t.Errorf("calls %q: want 2 and 3 taken, fenced, and a claim for 0 and 1", got)
	}
	if owned := lastOwned(b); !slices.Equal(owned, []int{0, 1}) {
		t.Errorf("owns %v before the fence passed", owned)
	}
	b.store.fenceErr = nil
	b.step(t)
	if owned := lastOwned(b); !slices.Equal(owned, []int{0, 1, 2, 3}) {
		t.Errorf("owns %v after the fence passed", owned)
	}
}

// A relay's first broker node is its rank among the table's relays, and
// the node it publishes to is shown in its session's application_name.
func TestLoopSpreadsOverBroker(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.lis.others = []int32{1, 2}
	b.step(t)
	if b.pub.startAt != 2 || b.lis.broker != "broker:5672" {
		t.Errorf("started at node %d, shown %q; want 2 (rank of pid 4242 after 1 and 2), broker:5672", b.pub.startAt, b.lis.broker)
	}
}
