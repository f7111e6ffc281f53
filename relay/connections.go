package relay

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/lmittmann/tint"
)

func (l *loop) listenerLost(err error) {
	var se *setupError
	if errors.As(err, &se) {
		l.listenerFailed(err)
	} else {
		l.log.Warn("listener connection lost", tint.Err(err))
	}
	l.metrics.connUp.WithLabelValues(connListener).Set(0)
	l.loseLeadership()
	l.lisNextTry = time.Time{}
}

func (l *loop) loseLeadership() {
	if l.leader {
		l.log.Warn("leadership lost")
		// Let a standby, if there is one, take over rather than race it
		// for the lock: it tries every standbyInterval.
		l.leadNotBefore = l.clock.Now().Add(deposedPause)
	}
	l.leader = false
	l.store.SetLeader(0)
	l.prog.setLeader(0)
	l.waiting, l.armed = false, false // armed again once leader again
	l.metrics.leader.Set(0)
}

// ensureListener (re)connects the LISTEN connection, with back-off. It
// returns true when the connection is up.
func (l *loop) ensureListener(ctx context.Context) bool {
	if l.lis.Connected() {
		return true
	}
	l.loseLeadership()
	if d := l.lisNextTry.Sub(l.clock.Now()); d > 0 {
		l.clock.Sleep(ctx, d)
		return false
	}
	if err := l.lis.Connect(ctx); err != nil {
		if ctx.Err() != nil {
			return false
		}
		l.lisFailures++
		l.lisNextTry = l.clock.Now().Add(retryDelay(l.lisFailures))
		l.listenerFailed(err)
		return false
	}
	l.lisSetupErr = ""
	l.lisConnects++
	if l.lisConnects > 1 {
		l.metrics.reconnects.WithLabelValues(connListener).Inc()
	}
	l.log.Info("listener connected", slog.String("channel", l.channel), slog.Int("pid", int(l.lis.PID())))
	l.lisFailures = 0
	l.metrics.connUp.WithLabelValues(connListener).Set(1)
	return true
}

// listenerFailed logs why the listener could not connect. A *setupError
// (a pooler, a read-only server, a full session pool) is logged once per
// streak with its cause and fix; the retries that follow log at debug.
func (l *loop) listenerFailed(err error) {
	var se *setupError
	if !errors.As(err, &se) {
		l.lisSetupErr = ""
		l.log.Error("listener connect failed", tint.Err(withHint(err)), slog.Int("attempt", l.lisFailures))
		return
	}
	if se.kind == setupReadOnly {
		// Sessions opened while the server was read-only stay so: open
		// new ones once it accepts writes.
		l.resetPool()
	}
	if l.lisSetupErr == se.kind {
		l.log.Debug("relay still cannot lead", slog.String("reason", se.kind), slog.Int("attempt", l.lisFailures))
		return
	}
	l.lisSetupErr = se.kind
	l.log.Error("relay cannot lead", slog.String("reason", se.kind), slog.String("cause", se.cause),
		slog.String("fix", se.fix), slog.Int("attempt", l.lisFailures))
}

// ensureLeader takes the table's leader lock on the listener connection,
// where it lives exactly as long as the LISTEN. A standby retries every
// standbyInterval and otherwise just waits.
func (l *loop) ensureLeader(ctx context.Context) bool {
	if l.leader {
		return true
	}
	if d := l.leadNotBefore.Sub(l.clock.Now()); d > 0 {
		// Just deposed: if another relay stands by, leave it the lead.
		others, err := l.lis.Others(ctx)
		if err != nil {
			if ctx.Err() == nil {
				l.listenerLost(err)
			}
			return false
		}
		if others {
			l.wait(ctx, d)
			return false
		}
		l.leadNotBefore = time.Time{}
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got, err := l.lis.TryLead(lctx)
	if err != nil {
		if ctx.Err() == nil {
			l.listenerLost(err)
		}
		return false
	}
	if !got {
		l.wait(ctx, standbyInterval)
		return false
	}
	// Before its first claim, wait for the claims of the leader before it
	// to settle or die (see pgStore.Fence): a deposed leader may still
	// have batches on the wire, and publishing later rows of their keys
	// first would reorder them.
	begin := l.clock.Now()
	if err := l.store.Fence(ctx, fenceWait(l.cfg)); err != nil {
		if ctx.Err() == nil {
			l.log.Warn("previous leader's claims did not settle in time; trying again", tint.Err(withHint(err)))
		}
		return false
	}
	if d := l.clock.Now().Sub(begin); d > 100*time.Millisecond {
		l.log.Info("waited for the previous leader's batches in flight", slog.Duration("waited", d.Round(time.Millisecond)))
	}
	l.leader = true
	// The server's pid of the LISTEN session, not the startup data's: a
	// pooler fills that with a number of its own.
	l.store.SetLeader(l.lis.PID())
	l.prog.setLeader(l.lis.PID())
	l.metrics.leader.Set(1)
	l.log.Info("leadership gained")
	// A leader killed while it waited leaves the flag set, and writers
	// would notify nobody until it is cleared. This one claims next.
	l.setWaiting(ctx, false)
	return true
}

// deposedPause is how long a relay that lost the lead waits before it
// tries to lead again while another relay is connected: two standby
// intervals, so that the standby, which tries every standbyInterval, takes
// over. Alone, it tries at once.
const deposedPause = 2 * standbyInterval

// fenceWait bounds one try of a new leader's wait for the claims before
// it; it logs and tries again after that. The old leader's batches settle
// within two confirm timeouts unless its broker is blocked or crawling.
func fenceWait(cfg Config) time.Duration { return 2*cfg.ConfirmTimeout + dbTimeout }

// ensurePublisher (re)connects to the broker, with back-off.
func (l *loop) ensurePublisher(ctx context.Context) bool {
	if l.pub.Connected() {
		return true
	}
	l.metrics.connUp.WithLabelValues(connAMQP).Set(0)
	if err := l.pub.Connect(ctx); err != nil {
		if ctx.Err() != nil {
			return false
		}
		l.amqpFailures++
		l.log.Error("broker connect failed", tint.Err(err), slog.Int("attempt", l.amqpFailures))
		l.clock.Sleep(ctx, retryDelay(l.amqpFailures))
		return false
	}
	l.amqpFailures = 0
	l.amqpConnects++
	if l.amqpConnects > 1 {
		l.metrics.reconnects.WithLabelValues(connAMQP).Inc()
	}
	l.metrics.connUp.WithLabelValues(connAMQP).Set(1)
	return true
}

// retryDelay is the capped exponential back-off, with jitter, between
// attempts to reach a server: 100ms doubling up to 10s.
func retryDelay(attempt int) time.Duration {
	return backoff(attempt, 100*time.Millisecond, 10*time.Second)
}

// sleep waits for d or until ctx is done, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
