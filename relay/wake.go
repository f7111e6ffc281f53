package relay

import (
	"context"
	"math"
	"time"

	"github.com/lmittmann/tint"
)

// The wake-up policy: how the relay learns of new rows.
//
// Writers notify at commit while the wake-up flag is up. A notification
// costs a writer little when commits are sparse, and a global lock at
// every commit when many writers commit at once. So the relay watches the
// rate at which rows arrive in its partitions (arrivals), scaled to the
// whole table's (tableRate), whose writers all pay for the flag:
//
//   - Sparse (below denseRate, or sparseRate once dense): the flag stays
//     up and armed (see pgStore.Arm), and the relay sleeps on LISTEN
//     between batches: every commit wakes it, with no poll to wait for.
//   - Dense: the flag is down while rows keep coming, and the relay claims
//     again busyInterval after its last claim, collecting the rows
//     that arrived meanwhile in one claim. When a claim comes back empty it
//     lingers, claiming a few times closer first (lingerSteps), since the
//     next row is likely a moment away, and then arms the flag.
//
// Arming raises the flag and waits a few milliseconds for the transactions
// that wrote to the table while it was down; if one is still open, the
// relay stays awake and tries again (stepLinger), so that no row committed
// after its last claim waits for the poll, however long its transaction
// ran after the insert. Armed, it claims once more and sleeps on LISTEN for
// at most PollInterval.

// denseRate is the arrival rate, in rows per second, from which writers
// stop notifying while the relay is busy, and sparseRate the rate under
// which they notify again: between the two the relay keeps its mode, so a
// load near the crossover does not flip it at every batch. Measured side
// by side on 2 cores (make bench, rates): at 200-500 rows/s sleeping on
// LISTEN gave p50 1.5-1.6ms and p99 7-9ms, polling p50 4ms and p99 11ms;
// at 1,000 rows/s both reached p99 11-13ms, and polling took half the CPU
// per message (0.38 against 0.79 ms) and a seventh of the queries.
const (
	denseRate  = 1000
	sparseRate = 600
)

// isDense applies the hysteresis: whether rows arrive densely at rate,
// given whether they did so far.
func isDense(rate float64, wasDense bool) bool {
	if wasDense {
		return rate >= sparseRate
	}
	return rate >= denseRate
}

// arrivalWindow is the time constant of the arrival rate's average.
const arrivalWindow = time.Second

// busyClaimInterval is the least time between the starts of two claims
// on the table while rows arrive densely and batches are not full; a
// backlog is drained back to back. A relay that owns a share of the
// partitions sees that share of the rows, and spaces its own claims by the
// inverse of its share (see busyInterval), up to maxBusyClaimInterval: the
// relays together claim about as often as one would, which is what their
// CPU and the server's can afford. Measured side by side (make bench,
// rates, two runs each, 2026-12-07): one relay at 1,000 rows/s (the
// writers reach just under it, and the relay is dense for part of the
// run), 2ms gave p95 3.3-3.4ms and p99 4.8-5.1ms, 5ms p95 5.7-6.1ms and
// p99 7.0-7.8ms, for 0-20% more CPU per message (0.82-0.85 of the minimal
// loop's, woken at every commit). Three relays sharing a table at that
// rate are never dense, so the spacing does not apply to them there; made
// dense from 800 rows/s, spacings of 2, 3 and 5ms each gave p99 13-21ms on
// 2 cores, where contention, not the spacing, set it (docs/performance.md,
// "Latency with three relays").
const (
	busyClaimInterval    = 2 * time.Millisecond
	maxBusyClaimInterval = 5 * time.Millisecond
)

// lingerSteps are the pauses between the claims a relay makes after its
// last rows, when they came densely, before it arms the flag: about 130ms
// in all, a few cheap queries at the end of each busy spell, against a
// NOTIFY in every writer's commit while the load goes on.
var lingerSteps = []time.Duration{2 * time.Millisecond, 4 * time.Millisecond, 8 * time.Millisecond,
	16 * time.Millisecond, 32 * time.Millisecond, 64 * time.Millisecond}

// armRetry is the pause before arming again after n failed tries: short
// at first, since a writer's transaction usually ends within milliseconds
// (its row then waits at most that long), longer once it has run for a
// second.
func armRetry(n int) time.Duration {
	switch {
	case n < 3:
		return 2 * time.Millisecond << n
	case n < 64:
		return 10 * time.Millisecond
	}
	return 100 * time.Millisecond
}

// arrivals estimates the rate at which rows arrive: an exponentially
// decaying sum of the rows claimed, with time constant arrivalWindow,
// whose mean is the arrival rate.
type arrivals struct {
	rate float64 // rows per second, as of at
	at   time.Time
}

// add records n rows claimed at now.
func (a *arrivals) add(now time.Time, n int) {
	a.rate = a.rateAt(now) + float64(n)/arrivalWindow.Seconds()
	a.at = now
}

// rateAt returns the estimate at now.
func (a arrivals) rateAt(now time.Time) float64 {
	if a.at.IsZero() {
		return 0
	}
	return a.rate * math.Exp(-max(0, now.Sub(a.at).Seconds())/arrivalWindow.Seconds())
}

// rest decides what a leader does after a drain that claimed n rows and
// left more waiting or not (see the policy above).
func (l *loop) rest(ctx context.Context, n int, more bool) step {
	dense := isDense(l.tableRate(), l.dense)
	l.dense = dense
	if n > 0 {
		l.lingered = 0
		if dense {
			// Writers need not notify: the relay claims again soon. The
			// first batch after a wake-up goes out before the flag is
			// lowered, so lowering it costs that event no latency.
			if l.waiting {
				l.setWaiting(ctx, false)
			}
			if d := l.lastClaim.Add(l.busyInterval()).Sub(l.clock.Now()); d > 0 {
				l.clock.Sleep(ctx, d)
			}
			return stepBusy
		}
		if more {
			// The drain stopped for a look with its last claim full:
			// look, then drain again. Asleep on LISTEN, the relay would
			// leave the rows for the poll: their commits notified before
			// it slept.
			return stepBusy
		}
		if l.armed {
			// The drain's last claim came back short, and every commit
			// since notifies: sleep until one does.
			if l.backlog {
				l.wentIdle()
			}
			l.wait(ctx, l.cfg.PollInterval)
			return stepBusy
		}
		// Sparse again: arm now rather than after an empty claim; the
		// next claim is the one before sleeping.
		if l.arm(ctx) {
			l.wentIdle()
			return stepAnnounce
		}
		return stepBusy
	}
	switch {
	case l.armed:
		l.wait(ctx, l.cfg.PollInterval)
		return stepWait
	case dense && l.lingered < len(lingerSteps):
		// Not idle yet: the next row is likely a moment away, and arming
		// now would make its writer pay for a NOTIFY.
		l.wait(ctx, min(lingerSteps[l.lingered], l.cfg.PollInterval))
		l.lingered++
		return stepLinger
	}
	if !l.arm(ctx) {
		// A writer that may not have notified is still in its
		// transaction: stay awake, look again shortly.
		l.wait(ctx, min(armRetry(l.armFailures), l.cfg.PollInterval))
		l.armFailures++
		return stepLinger
	}
	// Armed: claim once more (a row committed before the flag was up did
	// not notify), then sleep on LISTEN.
	l.wentIdle()
	return stepAnnounce
}

// tableRate estimates the rate at which rows arrive in the whole table
// from the relay's own: its share of the partitions sees its share of the
// rows (a hot key aside).
func (l *loop) tableRate() float64 {
	return l.arrivals.rateAt(l.clock.Now()) * l.shareInverse()
}

// shareInverse is P over the partitions the relay owns: how many times
// its share of the rows the whole table sees. 1 while it owns them all,
// or none, or P is not known yet.
func (l *loop) shareInverse() float64 {
	if n := len(l.owned); n > 0 && l.partitions > n {
		return float64(l.partitions) / float64(n)
	}
	return 1
}

// busyInterval is the least time between the starts of two of this
// relay's claims while rows arrive densely: busyClaimInterval scaled by
// the inverse of its share, as tableRate scales the rate, up to
// maxBusyClaimInterval.
func (l *loop) busyInterval() time.Duration {
	return min(time.Duration(float64(busyClaimInterval)*l.shareInverse()), maxBusyClaimInterval)
}

// wentIdle tells the gauges that the relay ran out of rows, so that they
// show a drained backlog now rather than at their next refresh (they
// refresh at most once a second for it). While rows come sparsely and are
// published at once, the relay runs out of rows after every batch: it
// tells them only when it has published rows that had waited (backlog).
func (l *loop) wentIdle() {
	l.backlog = false
	select {
	case l.idle <- struct{}{}:
	default:
	}
}

// arm raises the wake-up flag and reports whether the relay may sleep on
// LISTEN after one more claim (see pgStore.Arm).
func (l *loop) arm(ctx context.Context) bool {
	actx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	if !l.asleep {
		if err := l.lis.Sleeper(actx, true); err != nil {
			if ctx.Err() == nil {
				l.listenerLost(err)
			}
			return false
		}
		l.asleep = true
	}
	armed, err := l.store.Arm(actx)
	if err != nil {
		l.flagFailed(ctx, err)
		return false
	}
	l.waiting, l.armed = true, armed
	if armed {
		l.armFailures = 0
	}
	return armed
}

// setWaiting lowers (or raises) the wake-up flag.
func (l *loop) setWaiting(ctx context.Context, w bool) {
	sctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	if !w && l.asleep {
		if err := l.lis.Sleeper(sctx, false); err != nil {
			if ctx.Err() == nil {
				l.listenerLost(err)
			}
			return
		}
		l.asleep = false
	}
	if err := l.store.SetWaiting(sctx, w); err != nil {
		l.flagFailed(ctx, err)
		return
	}
	l.waiting, l.armed = w, false
}

// flagFailed logs a failed write of the wake-up flag and pauses before the
// loop tries again; the flag keeps its last value meanwhile.
func (l *loop) flagFailed(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	l.log.Error("record wait state", tint.Err(err))
	l.clock.Sleep(ctx, retryDelay(1))
}

// wait sleeps on LISTEN until a notification, the timeout or ctx; while
// partitions move or lie free, no later than the next look (lookSoon): a
// relay asleep for PollInterval took a free partition a second at a time
// (two relays each took one of a stopped relay's four, then one a second:
// 2.04 s against the 2 s takeover bound). A steady group's looks wait for
// the relay to wake: an idle relay polls no more often than PollInterval.
func (l *loop) wait(ctx context.Context, timeout time.Duration) {
	if l.member && l.moving {
		timeout = min(timeout, max(0, l.nextLook.Sub(l.clock.Now())))
	}
	if _, err := l.lis.Wait(ctx, timeout); err != nil && ctx.Err() == nil {
		l.listenerLost(err)
	}
}
