package relay

import (
	"context"
	"errors"
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
	waiting   bool // the wake-up flag is up: writers notify
	// asleep says the LISTEN session holds the sleepers lock (see
	// pgStore.queueFlag).
	asleep bool
	// armed says the flag has been up since the writers that did not
	// notify ended (see pgStore.Arm): the relay may sleep on LISTEN.
	armed bool
	// lingered counts the empty claims since the last rows, while the relay
	// polls before it arms the flag (see lingerSteps).
	lingered int
	// arrivals estimates the rate of rows, for the wake-up policy, and
	// dense is what the policy made of it last (see isDense).
	arrivals arrivals
	dense    bool
	// backlog says the relay claimed rows that had waited since the
	// gauges were last told it went idle (see wentIdle).
	backlog bool
	// armFailures counts the tries to arm the flag since it last worked
	// (see armRetry).
	armFailures int
	// lastClaim is when the last claim started.
	lastClaim time.Time

	// The relay's share of the table (share.go): the table's P as it
	// knows it (0 before the first look) and whether the table records
	// it, whether it is a member, the partitions it owns and claims for,
	// those it gained whose fence has not passed yet (since gainedAt), and
	// when it looks at the group next.
	partitions int
	settings   bool
	member     bool
	owned      []int
	gained     []int
	gainedAt   time.Time
	nextLook   time.Time
	// moving says partitions move or lie free: looks come every lookSoon,
	// and the relay sleeps no longer than until the next (see wait).
	moving bool
	// noBrokerSince is when the broker connection was last found down,
	// zero while it is up (see brokerGone).
	noBrokerSince time.Time
	// fatal ends Run with it: a problem retrying cannot outlast.
	fatal error

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
	stepStandby    step = "standby"     // the relay owns no partition yet, or none at all
	stepNoBroker   step = "no broker"   // the broker is down: connecting, or waiting to retry
	stepBlocked    step = "blocked"     // the broker blocks publishing
	stepBusy       step = "busy"        // rows drained
	stepRefused    step = "row refused" // the broker refused one message and closed the channel
	stepFailed     step = "failed"      // a claim, a batch or a settle failed
	stepLinger     step = "linger"      // no rows: polled again shortly
	stepAnnounce   step = "announce"    // no rows: set the wake-up flag, to claim once more
	stepWait       step = "wait"        // no rows: slept on LISTEN
	stepStopped    step = "stopped"     // the relay is stopping: the batches on the wire were settled
)

func (l *loop) run(ctx, work context.Context) error {
	for ctx.Err() == nil && l.fatal == nil {
		l.runOnce(ctx, work)
		l.prog.stepDone() // for the liveness probe (see Relay.Live)
	}
	return l.fatal
}

// runOnce makes one decision: connect what is down, lead, drain, or wait.
// ctx ends the relay; work bounds the batches on the wire (see Run).
func (l *loop) runOnce(ctx, work context.Context) step {
	l.ready.Store(l.lis.Connected() && (!l.leader || l.pub.Connected()))
	if !l.ensureListener(ctx) {
		return stepNoListener
	}
	if !l.ensurePublisher(ctx) {
		l.prog.noBroker.Store(true)
		return stepNoBroker
	}
	if !l.share(ctx) {
		return stepStandby
	}
	if l.pub.Blocked() {
		l.prog.noBroker.Store(true)
		l.clock.Sleep(ctx, blockedPause)
		return stepBlocked
	}
	l.prog.noBroker.Store(false)

	l.prog.draining.Store(true)
	n, more, err := l.drain(ctx, work)
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
		if errors.Is(err, errClaimTooOld) {
			// See sendInTime: the database or the relay itself was too
			// slow between claim and send, perhaps a cut.
			l.log.Warn("claim abandoned: too old to send; its rows were released unsent", tint.Err(err),
				slog.Duration("claim_age_max", l.claimAgeMax))
		} else {
			l.log.Error(msg, tint.Err(withHint(err)), slog.Int("rows", n))
		}
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
	if ctx.Err() != nil {
		return stepStopped
	}
	return l.rest(ctx, n, more)
}

// blockedPause is how long a leader whose broker blocks publishing waits
// before it looks again.
const blockedPause = 200 * time.Millisecond
