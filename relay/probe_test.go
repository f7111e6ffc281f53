package relay

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// The liveness probe against the loop driven by fakes: a loop whose claim
// hangs fails Live within a short bound; a loop waiting on a broker that
// blocks publishing does not.

// probeBound is the liveness bound of these tests: short, so that a stuck
// loop shows within well under a second.
const probeBound = 150 * time.Millisecond

// hangingStore is a fakeStore whose claims block until their context
// ends: a loop stuck in a claim.
type hangingStore struct {
	*fakeStore
	entered chan struct{} // closed as the first claim blocks
	once    sync.Once
}

func (s *hangingStore) Claim(ctx context.Context, _ int) (*claim, error) {
	s.once.Do(func() { close(s.entered) })
	<-ctx.Done()
	return nil, ctx.Err()
}

// blockingPublisher is a fakePublisher whose broker blocks publishing
// while blocked is set, and whose Await waits for release: a batch
// waiting for confirms the broker holds back.
type blockingPublisher struct {
	*fakePublisher
	blocked  atomic.Bool
	awaiting chan struct{} // closed as the first Await begins
	release  chan struct{}
	once     sync.Once
}

func (p *blockingPublisher) Blocked() bool { return p.blocked.Load() }

func (p *blockingPublisher) Await(b *batch) error {
	p.once.Do(func() { close(p.awaiting) })
	<-p.release
	return p.fakePublisher.Await(b)
}

// pacedListener is a fakeListener whose waits take real time (a few
// milliseconds at most), so that a loop on its own goroutine that only
// waits, as a standby does, does not spin.
type pacedListener struct{ *fakeListener }

func (l pacedListener) Wait(ctx context.Context, d time.Duration) (bool, error) {
	t := time.NewTimer(min(d, 5*time.Millisecond))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	l.fakeListener.waits = nil // the loop runs long: keep no history
	return false, nil
}

// runProbed runs the loop of b with the liveness bound probeBound, as Run
// would, until the test ends, and returns its relay.
func runProbed(t *testing.T, b *loopBundle) *Relay {
	t.Helper()
	b.lis.clock = nil // the loop runs on its own goroutine: no shared fake time
	b.l.lis = pacedListener{b.lis}
	r := b.l.Relay
	r.prog, r.liveBound = b.l.prog, probeBound
	blocked := b.l.pub.Blocked
	r.prog.blocked.Store(&blocked)
	ctx, cancel := context.WithCancel(context.Background())
	r.begin(ctx.Done())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.l.run(ctx, ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	if err := r.Live(); err != nil {
		t.Fatalf("Live at the start: %v", err)
	}
	return r
}

func TestLiveFailsWhenLoopHangs(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	st := &hangingStore{fakeStore: b.store, entered: make(chan struct{})}
	b.l.store = st
	r := runProbed(t, b)
	<-st.entered
	begin := time.Now()
	testenv.WaitFor(t, 2*time.Second, "/healthz to fail", func() bool { return r.Live() != nil })
	if d := time.Since(begin); d < probeBound {
		t.Errorf("Live failed %s after the claim hung, before the bound %s", d, probeBound)
	}
	if err := r.Live(); !strings.Contains(err.Error(), "no progress") || !strings.Contains(err.Error(), "while draining") {
		t.Errorf("Live = %q, want the reason", err)
	}
	if !r.Ready() {
		t.Error("Ready = false: a stuck loop must not fail readiness")
	}
}

func TestLiveHoldsWhileBrokerBlocksConfirms(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.store.claims = []fakeClaim{{rows: rows("1", "2")}}
	pub := &blockingPublisher{fakePublisher: b.pub, awaiting: make(chan struct{}), release: make(chan struct{})}
	b.l.pub = pub
	r := runProbed(t, b)
	<-pub.awaiting
	pub.blocked.Store(true)    // a resource alarm while the batch waits
	time.Sleep(3 * probeBound) // leeway: the bound passes while the broker blocks
	if err := r.Live(); err != nil {
		t.Fatalf("Live while the broker blocks a batch's confirms: %v", err)
	}
	// Unblocked, the same wait past the bound is a stuck batch.
	pub.blocked.Store(false)
	testenv.WaitFor(t, 2*time.Second, "/healthz to fail", func() bool { return r.Live() != nil })
	if err := r.Live(); !strings.Contains(err.Error(), "while draining") {
		t.Errorf("Live = %q, want it to say the loop is draining", err)
	}
	close(pub.release)
	testenv.WaitFor(t, 2*time.Second, "/healthz to recover", func() bool { return r.Live() == nil })
}

// A standby and an idle leader complete steps all the time: Live holds.
func TestLiveHoldsForStandby(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.lis.lead = false // another relay leads
	r := runProbed(t, b)
	time.Sleep(3 * probeBound) // leeway: the bound passes
	if err := r.Live(); err != nil {
		t.Errorf("Live of a standby: %v", err)
	}
	if ok, state := r.Status(); !ok || !strings.HasPrefix(state, "standby") {
		t.Errorf("Status of a standby = %t, %q", ok, state)
	}
}

func TestProbesAcrossRun(t *testing.T) {
	t.Parallel()
	r := &Relay{prog: &progress{}, liveBound: probeBound}
	if r.Ready() || r.Live() != nil {
		t.Errorf("before Run: Ready %t, Live %v; want false, nil", r.Ready(), r.Live())
	}
	stopping := make(chan struct{})
	st := r.begin(stopping)
	if !r.Ready() {
		t.Error("Ready = false once Run began")
	}
	if ok, state := r.Status(); ok || state != "PostgreSQL LISTEN connection down" {
		t.Errorf("Status with no connection = %t, %q", ok, state)
	}
	r.ready.Store(true)
	r.prog.setLeader(42)
	if ok, state := r.Status(); !ok || !strings.HasPrefix(state, "leader") {
		t.Errorf("Status of a connected leader = %t, %q", ok, state)
	}
	close(stopping)
	if r.Ready() {
		t.Error("Ready = true while shutting down")
	}
	r.prog.lastStep.Store(time.Now().Add(-time.Hour).UnixNano())
	r.prog.lastClaim.Store(0)
	if err := r.Live(); err != nil {
		t.Errorf("Live while shutting down: %v", err)
	}
	st.end(errors.New("boom"))
	if err := r.Live(); err == nil || strings.Contains(err.Error(), "boom") {
		t.Errorf("Live after Run failed = %v; want an error that does not repeat Run's", err)
	}
}

func TestLivenessBound(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		cfg   Config
		hosts int
		want  time.Duration
	}{
		{"defaults: a new leader's fence", Config{}, 1, 190 * time.Second},
		{"short confirm timeout", Config{ConfirmTimeout: 5 * time.Second}, 1, 140 * time.Second},
		{"three database hosts", Config{}, 3, 210 * time.Second},
		{"long poll interval", Config{PollInterval: 10 * time.Minute}, 1, 10*time.Minute + 35*time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := livenessBound(tc.cfg.withDefaults(), tc.hosts); got != tc.want {
				t.Errorf("livenessBound = %s, want %s", got, tc.want)
			}
		})
	}
}
