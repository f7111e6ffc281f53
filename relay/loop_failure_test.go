package relay

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	amqp "github.com/rabbitmq/amqp091-go"
)

// What the loop does after each kind of failure: whether it backs off,
// what it logs and reports, and what becomes of the rows.
func TestLoopFailures(t *testing.T) {
	t.Parallel()
	closed := fmt.Errorf("channel closed: %w", &amqp.Error{Code: amqp.PreconditionFailed, Reason: "message too large", Server: true})
	for _, tc := range []struct {
		name    string
		arrange func(b *loopBundle)
		step    step
		backOff bool     // slept a retry delay
		logs    []string // lines logged
		check   func(t *testing.T, b *loopBundle)
	}{{
		name: "row refused: reconnect at once",
		arrange: func(b *loopBundle) {
			b.store.claims = []fakeClaim{{rows: rows("1", "2")}}
			b.pub.awaitErr, b.pub.rowRefused = closed, true
		},
		step: stepRefused,
		logs: []string{"broker refused a message and closed the channel; reconnecting"},
	}, {
		name: "channel or connection lost: rows not sent, back off",
		arrange: func(b *loopBundle) {
			b.store.claims = []fakeClaim{{rows: rows("1", "2")}}
			b.pub.awaitErr = fmt.Errorf("channel closed: %w", amqp.ErrClosed)
		},
		step: stepFailed, backOff: true,
		logs: []string{`msg="batch failed"`, "broker connection lost"},
		check: func(t *testing.T, b *loopBundle) {
			for _, r := range b.store.settled[0] {
				if r.Outcome != NotSent {
					t.Errorf("row %d settled %v after a lost connection, want NotSent (not the row's fault)", r.Row.ID, r.Outcome)
				}
			}
			if testutil.ToFloat64(b.l.metrics.connUp.WithLabelValues(connAMQP)) != 0 {
				t.Error("outbox_connection_up{amqp} still 1")
			}
		},
	}, {
		name: "confirm timeout: rows not sent, back off",
		arrange: func(b *loopBundle) {
			b.store.claims = []fakeClaim{{rows: rows("1")}}
			b.pub.awaitErr = errors.New("no confirms within 30s")
		},
		step: stepFailed, backOff: true,
		logs: []string{`msg="batch failed"`, "no confirms within 30s"},
		check: func(t *testing.T, b *loopBundle) {
			if r := b.store.settled[0][0]; r.Outcome != NotSent {
				t.Errorf("row settled %v after a confirm timeout, want NotSent", r.Outcome)
			}
		},
	}, {
		name: "database error on claim: back off, check the listener",
		arrange: func(b *loopBundle) {
			b.store.claims = []fakeClaim{{err: errors.New("connection refused")}}
		},
		step: stepFailed, backOff: true,
		logs: []string{`msg="claim failed"`},
		check: func(t *testing.T, b *loopBundle) {
			if !b.l.leader {
				t.Error("a claim error with a healthy listener lost leadership")
			}
			wantJournal(t, b.since(6), "claim error", "ping")
		},
	}, {
		name: "database gone: the listener says so, leadership lost",
		arrange: func(b *loopBundle) {
			b.store.claims = []fakeClaim{{err: errors.New("connection refused")}}
			b.lis.pingErr = errors.New("ping listener: EOF")
		},
		step: stepFailed, backOff: true,
		logs: []string{`msg="claim failed"`, "listener connection lost", "leadership lost"},
		check: func(t *testing.T, b *loopBundle) {
			if b.l.leader || lastPID(b) != 0 {
				t.Errorf("still leading (pid %d) with the listener lost", lastPID(b))
			}
		},
	}, {
		name: "settle fails: back off",
		arrange: func(b *loopBundle) {
			b.store.claims = []fakeClaim{{rows: rows("1")}}
			b.store.settleErr = errors.New("server closed the connection")
		},
		step: stepFailed, backOff: true,
		logs: []string{`msg="batch failed"`, "settle 1 rows: server closed the connection"},
	}, {
		name:    "broker blocked: pause, claim nothing",
		arrange: func(b *loopBundle) { b.pub.blocked = true },
		step:    stepBlocked,
		check: func(t *testing.T, b *loopBundle) {
			if b.store.claimed != 0 || b.clock.sleeps[len(b.clock.sleeps)-1] != blockedPause {
				t.Errorf("claims %d, sleeps %v while blocked", b.store.claimed, b.clock.sleeps)
			}
			if !b.l.prog.noBroker.Load() {
				t.Error("progress does not say the broker is unavailable")
			}
		},
	}, {
		name: "broker down: back off, claim nothing",
		arrange: func(b *loopBundle) {
			b.pub.connected = false
			b.pub.connectErrs = []error{errors.New("dial tcp: connection refused")}
		},
		step: stepNoBroker, backOff: true,
		logs: []string{"broker connect failed"},
		check: func(t *testing.T, b *loopBundle) {
			if b.store.claimed != 0 || !b.l.prog.noBroker.Load() {
				t.Errorf("claims %d, noBroker %t without a broker", b.store.claimed, b.l.prog.noBroker.Load())
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupLoop(t)
			b.step(t) // leader, broker connected, lingering
			b.store.claimed = 0
			if len(*b.j) != 6 {
				t.Fatalf("setup: %q", *b.j)
			}
			tc.arrange(b)
			sleeps := len(b.clock.sleeps)
			if got := b.step(t); got != tc.step {
				t.Errorf("step %q, want %q", got, tc.step)
			}
			slept := b.clock.sleeps[sleeps:]
			backedOff := len(slept) == 1 && slept[0] >= 50*time.Millisecond && slept[0] <= 100*time.Millisecond
			if backedOff != tc.backOff {
				t.Errorf("slept %v; want a first retry delay (50-100ms): %t", slept, tc.backOff)
			}
			for _, line := range tc.logs {
				wantLog(t, b, line, 1)
			}
			if tc.check != nil {
				tc.check(t, b)
			}
		})
	}
}

// Repeated failures back off further, up to the cap; one success resets it.
func TestLoopBackOffGrows(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.steps(t, 2)
	for range 12 {
		b.store.claims = append(b.store.claims, fakeClaim{err: errors.New("connection refused")})
	}
	sleeps := len(b.clock.sleeps)
	b.steps(t, 12)
	slept := b.clock.sleeps[sleeps:]
	if slept[0] > 100*time.Millisecond || slept[3] < 400*time.Millisecond || slept[11] < 5*time.Second || slept[11] > 10*time.Second {
		t.Errorf("retry delays %v: want 100ms doubling, capped at 10s", slept)
	}
	b.steps(t, 1) // a claim that works
	b.store.claims = []fakeClaim{{err: errors.New("connection refused")}}
	sleeps = len(b.clock.sleeps)
	b.steps(t, 1)
	if d := b.clock.sleeps[sleeps]; d > 100*time.Millisecond {
		t.Errorf("first delay after a success %s, want at most 100ms", d)
	}
}

// On shutdown, the batches on the wire are awaited and settled, and
// nothing more is claimed.
func TestLoopShutdownWithBatchInFlight(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.steps(t, 2)
	n := len(*b.j)
	stop, cancel := context.WithCancel(context.Background())
	b.store.claims = []fakeClaim{{rows: rows("1", "2", "3"), full: true}, {rows: rows("4", "5", "6"), full: true},
		{rows: rows("7", "8", "9"), full: true}}
	b.pub.onAwait = cancel
	if got := b.l.runOnce(stop, context.Background()); got != stepStopped {
		t.Errorf("step %q, want %q", got, stepStopped)
	}
	b.l.run(stop, context.Background()) // returns at once
	wantJournal(t, b.since(n), "claim [1 2 3]", "send [1 2 3]", "claim [4 5 6]", "send [4 5 6]",
		"settle [1 2 3]", "settle [4 5 6]")
	if len(b.store.claims) != 1 || testutil.ToFloat64(b.l.metrics.published) != 6 {
		t.Errorf("claims left %d (want 1), published %v (want 6)", len(b.store.claims), testutil.ToFloat64(b.l.metrics.published))
	}
}

// A listener that cannot connect is retried with back-off; a session the
// relay cannot use (a pooler, a read-only server) is logged once per
// streak with its cause and fix, and a read-only server drops the pool's
// sessions so that new ones are opened once it accepts writes. A pooler
// where PostgreSQL was stops the pool's sessions getting the relay's
// settings, and drops those that had them.
func TestLoopListenerSetupErrors(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.l.sessionsOwn.Store(true) // proved before: the URL reaches a pooler now
	b.lis.connectErrs = []error{poolerError("test"), poolerError("test"), errReadOnly, errReadOnly,
		errors.New("dial tcp: connection refused")}
	var got []step
	for range 12 {
		if got = append(got, b.step(t)); got[len(got)-1] != stepNoListener {
			break
		}
	}
	if last := got[len(got)-1]; last != stepAnnounce {
		t.Fatalf("steps %q: never led", got)
	}
	wantLog(t, b, `msg="relay cannot lead" reason=pooler`, 1)
	wantLog(t, b, `msg="relay still cannot lead" reason=pooler`, 1)
	wantLog(t, b, `msg="relay cannot lead" reason=read_only`, 1)
	wantLog(t, b, "listener connect failed", 1)
	if b.resets != 3 {
		t.Errorf("pool reset %d times, want once on finding a pooler and once per read-only answer (3)", b.resets)
	}
	if b.l.sessionsOwn.Load() {
		t.Error("the pool's new sessions would still get the relay's settings behind a pooler")
	}
	// Five failures, each followed by a wait for its retry delay.
	var waited time.Duration
	for _, d := range b.clock.sleeps {
		waited += d
	}
	if waited < 750*time.Millisecond || waited > 3100*time.Millisecond {
		t.Errorf("waited %s over 5 failed connects (%v), want the retry delays 0.1s to 1.6s", waited, b.clock.sleeps)
	}
	if !b.l.ready.Load() && b.step(t) != stepWait || !b.l.ready.Load() {
		t.Error("not ready once connected and leading")
	}
}

// A wake-up flag that cannot be written is logged and retried after a
// pause; the relay does not sleep on LISTEN until the flag is armed.
func TestLoopFlagWriteFails(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	b.store.waitErr = errors.New("connection refused")
	wantSteps(t, b.steps(t, 1), stepLinger)
	wantLog(t, b, "record wait state", 2) // lowering it on leading, then arming it
	if b.l.armed || len(b.clock.sleeps) != 2 {
		t.Errorf("armed %t, sleeps %v; want unarmed after two pauses", b.l.armed, b.clock.sleeps)
	}
	for _, d := range b.clock.sleeps {
		if d < 50*time.Millisecond || d > 100*time.Millisecond {
			t.Errorf("paused %s after a failed flag write, want a first retry delay (50-100ms)", d)
		}
	}
	b.store.waitErr = nil
	wantSteps(t, b.steps(t, 2), stepAnnounce, stepWait)
}
