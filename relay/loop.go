package relay

import (
	"context"
	"log/slog"
	"time"

	"github.com/lmittmann/tint"
)

// loop is the state of one Run: it joins the store, the publisher and the
// listener (seams.go), decides what to do next (runOnce) and owns
// everything it decides with. Only Run's goroutine touches it; what other
// goroutines read goes through prog and the metrics.
type loop struct {
	*Relay
	store   store
	pub     publisher
	lis     listener
	clock   clock
	vac     *vacuumer
	prog    *progress
	channel string        // the NOTIFY channel, for logs
	idle    chan struct{} // tells the gauges the relay ran out of rows
	// resetPool drops the pool's sessions, so that new ones are opened:
	// those opened while the server was read-only stay so.
	resetPool func()
	leader    bool
	waiting   bool // the wake-up flag says we sleep on LISTEN
	// lingered counts the empty claims since the last rows, while the relay
	// polls before announcing that it waits (see lingerSteps).
	lingered int
	// lastClaim is when the last claim started.
	lastClaim time.Time

	lisFailures, lisConnects   int
	lisNextTry                 time.Time
	lisSetupErr                string // kind of the last setupError logged, so it is logged once per streak
	amqpFailures, amqpConnects int
	dbFailures                 int
}

// step names what one runOnce did, for tests and debugging.
type step string

const (
	stepNoListener step = "no listener" // the listener is down: connecting, or waiting to retry
	stepStandby    step = "standby"     // another relay leads, or the fence did not clear
	stepNoBroker   step = "no broker"   // the broker is down: connecting, or waiting to retry
	stepBlocked    step = "blocked"     // the broker blocks publishing
	stepBusy       step = "busy"        // rows drained
	stepRefused    step = "row refused" // the broker refused one message and closed the channel
	stepFailed     step = "failed"      // a claim, a batch or a settle failed
	stepLinger     step = "linger"      // no rows: polled again shortly
	stepAnnounce   step = "announce"    // no rows: set the wake-up flag, to claim once more
	stepWait       step = "wait"        // no rows: slept on LISTEN
)

func (l *loop) run(ctx, work context.Context) {
	for ctx.Err() == nil {
		l.runOnce(ctx, work)
	}
}

// runOnce makes one decision: connect what is down, lead, drain, or wait.
// ctx ends the relay; work bounds the batches on the wire (see Run).
func (l *loop) runOnce(ctx, work context.Context) step {
	l.ready.Store(l.lis.Connected() && (!l.leader || l.pub.Connected()))
	if !l.ensureListener(ctx) {
		return stepNoListener
	}
	if !l.ensureLeader(ctx) {
		return stepStandby
	}
	if !l.ensurePublisher(ctx) {
		l.prog.noBroker.Store(true)
		return stepNoBroker
	}
	if l.pub.Blocked() {
		l.prog.noBroker.Store(true)
		l.clock.Sleep(ctx, blockedPause)
		return stepBlocked
	}
	l.prog.noBroker.Store(false)

	l.prog.draining.Store(true)
	n, err := l.drain(ctx, work)
	l.prog.draining.Store(false)
	if err != nil && l.pub.RowRefused() {
		// The broker closed the channel over one message: the
		// publisher finds it and fails that row alone. Not an outage:
		// reconnect without back-off.
		l.log.Warn("broker refused a message and closed the channel; reconnecting", tint.Err(err))
		return stepRefused
	}
	if err != nil {
		l.dbFailures++
		msg := "batch failed"
		if n == 0 {
			msg = "claim failed"
		}
		l.log.Error(msg, tint.Err(withHint(err)), slog.Int("rows", n))
		if !l.pub.Connected() {
			l.log.Warn("broker connection lost")
			l.metrics.connUp.WithLabelValues(connAMQP).Set(0)
		}
		// The database may be gone (a failover, a restart) while the
		// listener, read only while the relay waits, has not noticed:
		// ask it now, so that leadership and readiness say so and the
		// next claim does not trust a pid of another server.
		if err := l.lis.Ping(ctx); err != nil && ctx.Err() == nil {
			l.listenerLost(err)
		}
		l.clock.Sleep(ctx, retryDelay(l.dbFailures))
		return stepFailed
	}
	l.dbFailures = 0
	if n > 0 {
		// Busy: writers need not notify. The first batch after a
		// wake-up goes out before the flag is cleared, so the
		// clearing costs that event no latency.
		if l.waiting {
			l.setWaiting(ctx, false)
		}
		l.lingered = 0
		// The last batch was short: rows trickle in. Let a few more
		// gather rather than pay a claim and a commit for each handful.
		if d := l.lastClaim.Add(busyClaimInterval).Sub(l.clock.Now()); d > 0 {
			l.clock.Sleep(ctx, d)
		}
		return stepBusy
	}
	switch {
	case l.waiting:
		l.wait(ctx, l.cfg.PollInterval)
		return stepWait
	case l.lingered < len(lingerSteps):
		// Not idle yet: under a steady load the next row is a
		// moment away, and announcing the wait now would make its
		// writer pay for a NOTIFY. Poll a few times, closer first.
		l.wait(ctx, min(lingerSteps[l.lingered], l.cfg.PollInterval))
		l.lingered++
		return stepLinger
	default:
		// Idle: announce the wait, then claim once more (a row
		// committed before the announcement did not notify), then
		// sleep on LISTEN.
		l.setWaiting(ctx, true)
		select {
		case l.idle <- struct{}{}:
		default:
		}
		return stepAnnounce
	}
}

// blockedPause is how long a leader whose broker blocks publishing waits
// before it looks again.
const blockedPause = 200 * time.Millisecond

// busyClaimInterval is the least time between the starts of two claims
// while rows trickle in (batches are not full). A backlog is drained
// back to back.
const busyClaimInterval = 5 * time.Millisecond

// lingerSteps are the pauses between the claims a relay makes after its
// last rows before it announces that it waits for a NOTIFY: about 130ms in
// all, a few cheap queries at the end of each busy spell, against a NOTIFY
// in every writer's commit while the load goes on.
var lingerSteps = []time.Duration{2 * time.Millisecond, 4 * time.Millisecond, 8 * time.Millisecond,
	16 * time.Millisecond, 32 * time.Millisecond, 64 * time.Millisecond}

func (l *loop) setWaiting(ctx context.Context, w bool) {
	sctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	if err := l.store.SetWaiting(sctx, w); err != nil {
		if ctx.Err() == nil {
			l.log.Error("record wait state", tint.Err(err))
			l.clock.Sleep(ctx, retryDelay(1))
		}
		return
	}
	l.waiting = w
}

// wait sleeps on LISTEN until a notification, the timeout or ctx.
func (l *loop) wait(ctx context.Context, timeout time.Duration) {
	if _, err := l.lis.Wait(ctx, timeout); err != nil && ctx.Err() == nil {
		l.listenerLost(err)
	}
}
