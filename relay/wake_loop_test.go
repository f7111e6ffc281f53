package relay

// The wake-up policy's decisions (wake.go), driven through the loop with
// fakes, as in loop_test.go.

import (
	"slices"
	"testing"
	"time"
)

// Dense rows: the flag goes down once the batch after a wake-up is out,
// the leader claims at most every busyClaimInterval, and after its last
// rows polls a few times, closer first, before it arms the flag again.
func TestLoopWakeUpDense(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.l.cfg.PollInterval = 10 * time.Millisecond
	b.steps(t, 2) // armed, asleep
	n := len(*b.j)
	b.l.arrivals.add(b.clock.now, 2*denseRate)
	b.store.claims = []fakeClaim{{rows: rows("1", "2")}}
	wantSteps(t, b.steps(t, 9), stepBusy, stepLinger, stepLinger, stepLinger, stepLinger, stepLinger, stepLinger,
		stepAnnounce, stepWait)
	wantJournal(t, b.since(n), "claim [1 2]", "send [1 2]", "settle [1 2]", "waiting off",
		"claim 0", "wait 2ms", "claim 0", "wait 4ms", "claim 0", "wait 8ms", "claim 0", "wait 10ms", "claim 0", "wait 10ms",
		"claim 0", "wait 10ms", "claim 0", "arm", "claim 0", "wait 10ms")
	if !slices.Equal(b.clock.sleeps, []time.Duration{busyClaimInterval}) {
		t.Errorf("sleeps %v, want [%s] after the short batch", b.clock.sleeps, busyClaimInterval)
	}
}

// When rows come sparsely again, the leader arms the flag as soon as a
// batch is out, not after an empty claim.
func TestLoopWakeUpDenseToSparse(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.steps(t, 2) // armed, asleep
	b.l.arrivals.add(b.clock.now, 2*denseRate)
	b.store.claims = []fakeClaim{{rows: rows("1")}}
	wantSteps(t, b.steps(t, 1), stepBusy)
	b.clock.now = b.clock.now.Add(5 * arrivalWindow)
	n := len(*b.j)
	b.store.claims = []fakeClaim{{rows: rows("2")}}
	wantSteps(t, b.steps(t, 2), stepAnnounce, stepWait)
	wantJournal(t, b.since(n), "claim [2]", "send [2]", "settle [2]", "arm", "claim 0", "wait 1s")
}

// Near the crossover the mode holds: dense from denseRate, sparse again
// only under sparseRate.
func TestLoopDenseHysteresis(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		rate     float64
		wasDense bool
		want     bool
	}{
		{0, false, false}, {sparseRate, false, false}, {denseRate - 1, false, false}, {denseRate, false, true},
		{denseRate, true, true}, {sparseRate, true, true}, {sparseRate - 1, true, false}, {0, true, false},
	} {
		if got := isDense(tc.rate, tc.wasDense); got != tc.want {
			t.Errorf("isDense(%v, %t) = %t, want %t", tc.rate, tc.wasDense, got, tc.want)
		}
	}
}

// The flag is the table's, and what a NOTIFY costs writers depends on the
// table's commit rate: a relay that owns a third of the partitions and
// sees half the dense rate lowers the flag all the same.
func TestLoopWakeUpDenseForTheTable(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.lis.partitions = 12
	b.lis.others = []int32{1, 2}
	b.lis.foreign = map[int]int32{0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2, 7: 2}
	b.steps(t, 2) // owns 8-11, armed, asleep
	n := len(*b.j)
	b.l.arrivals.add(b.clock.now, denseRate/2)
	b.store.claims = []fakeClaim{{rows: rows("1", "2")}}
	wantSteps(t, b.steps(t, 1), stepBusy)
	wantJournal(t, b.since(n), "claim [1 2]", "send [1 2]", "settle [1 2]", "waiting off")
	// Its claims are spaced by its share: 3 × 2ms, up to 5ms.
	if !slices.Equal(b.clock.sleeps, []time.Duration{maxBusyClaimInterval}) {
		t.Errorf("sleeps %v, want [%s] after the short batch", b.clock.sleeps, maxBusyClaimInterval)
	}
	if got := b.l.busyInterval(); got != maxBusyClaimInterval {
		t.Errorf("busyInterval %s owning 4 of 12, want %s", got, maxBusyClaimInterval)
	}
	for _, tc := range []struct {
		owned      []int
		partitions int
		want       time.Duration
	}{
		{[]int{0, 1, 2, 3, 4, 5, 6, 7}, 12, 3 * time.Millisecond},
		{[]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 12, busyClaimInterval},
		{nil, 0, busyClaimInterval}, // P not known yet
	} {
		b.l.owned, b.l.partitions = tc.owned, tc.partitions
		if got := b.l.busyInterval(); got != tc.want {
			t.Errorf("busyInterval %s owning %d of %d, want %s", got, len(tc.owned), tc.partitions, tc.want)
		}
	}
}

// The rate estimate follows the load and forgets it.
func TestLoopArrivalRate(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	for _, perSecond := range []int{10, 50, 200, 1000, 5000} {
		var a arrivals
		every := time.Second / time.Duration(perSecond)
		for range 5 * perSecond {
			now = now.Add(every)
			a.add(now, 1)
		}
		if got := a.rateAt(now); got < 0.8*float64(perSecond) || got > 1.2*float64(perSecond) {
			t.Errorf("%d rows/s: estimate %.0f", perSecond, got)
		}
		if got := a.rateAt(now.Add(5 * time.Second)); got > 0.01*float64(perSecond) {
			t.Errorf("%d rows/s, then 5s without: estimate %.1f", perSecond, got)
		}
	}
}
