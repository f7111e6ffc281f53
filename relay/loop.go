package relay

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lmittmann/tint"
)

// loop is the state of one Run.
type loop struct {
	*Relay
	store   *pgStore
	pub     *amqpPublisher
	lis     *pgListener
	vac     *vacuumer
	pool    *pgxpool.Pool
	prog    *progress
	idle    chan struct{} // tells the gauges the relay ran out of rows
	leader  bool
	waiting bool // the wake-up flag says we sleep on LISTEN
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

func (l *loop) run(ctx, work context.Context) {
	for ctx.Err() == nil {
		l.ready.Store(l.lis.Connected() && (!l.leader || l.pub.Connected()))
		if !l.ensureListener(ctx) {
			continue
		}
		if !l.ensureLeader(ctx) {
			continue
		}
		if !l.ensurePublisher(ctx) {
			l.prog.noBroker.Store(true)
			continue
		}
		if l.pub.Blocked() {
			l.prog.noBroker.Store(true)
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		l.prog.noBroker.Store(false)

		l.prog.draining.Store(true)
		n, err := l.drain(ctx, work)
		l.prog.draining.Store(false)
		if err != nil && l.pub.rowRefused {
			// The broker closed the channel over one message: the
			// publisher finds it and fails that row alone. Not an outage:
			// reconnect without back-off.
			l.log.Warn("broker refused a message and closed the channel; reconnecting", tint.Err(err))
			continue
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
			sleep(ctx, retryDelay(l.dbFailures))
			continue
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
			sleep(ctx, time.Until(l.lastClaim.Add(busyClaimInterval)))
			continue
		}
		switch {
		case l.waiting:
			l.wait(ctx, l.cfg.PollInterval)
		case l.lingered < len(lingerSteps):
			// Not idle yet: under a steady load the next row is a
			// moment away, and announcing the wait now would make its
			// writer pay for a NOTIFY. Poll a few times, closer first.
			l.wait(ctx, min(lingerSteps[l.lingered], l.cfg.PollInterval))
			l.lingered++
		default:
			// Idle: announce the wait, then claim once more (a row
			// committed before the announcement did not notify), then
			// sleep on LISTEN.
			l.setWaiting(ctx, true)
			select {
			case l.idle <- struct{}{}:
			default:
			}
		}
	}
}

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

// observe records a settled batch in metrics and logs.
func (l *loop) observe(results []Result, st settled) {
	brokenKeys := map[string]bool{}
	var failures int
	var firstErr Result
	for _, res := range results {
		key := ""
		if res.Row.PartitionKey != nil {
			key = *res.Row.PartitionKey
		}
		switch res.Outcome {
		case Acked:
			l.metrics.published.Inc()
			l.metrics.deliveryLatency.Observe(res.AckedAt.Sub(res.Row.CreatedAt).Seconds())
			if key != "" && brokenKeys[key] {
				l.metrics.orderBreaks.Inc()
			}
		case Failed, NotSent:
			if key != "" && res.Reason != reasonHeld {
				brokenKeys[key] = true
			}
			if res.Reason == reasonHeld {
				continue
			}
			l.metrics.failures.WithLabelValues(res.Reason).Inc()
			if res.Outcome == Failed {
				if failures == 0 {
					firstErr = res
				}
				failures++
			}
		}
	}
	if failures > 0 {
		l.log.Warn("publish failed", slog.Int("rows", failures), slog.Int64("id", firstErr.Row.ID),
			slog.String("message_id", firstErr.Row.MessageID), rowAttr("exchange", firstErr.Row.Exchange),
			rowAttr("routing_key", firstErr.Row.RoutingKey), slog.Int("attempt", firstErr.Row.Attempts+1),
			slog.String("reason", firstErr.Reason), tint.Err(firstErr.Err))
	}
	for _, id := range st.dead {
		for _, res := range results {
			if res.Row.ID == id {
				l.log.Warn("row parked dead", slog.Int64("id", id), slog.String("message_id", res.Row.MessageID),
					rowAttr("exchange", res.Row.Exchange), rowAttr("routing_key", res.Row.RoutingKey),
					slog.Int("attempt", res.Row.Attempts+1), tint.Err(res.Err))
			}
		}
	}
	l.log.Debug("batch settled", slog.Int("rows", len(results)), slog.Int("deleted", st.deleted),
		slog.Int("retried", st.retried), slog.Int("dead", len(st.dead)))
}

func (l *loop) setWaiting(ctx context.Context, w bool) {
	sctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	if err := l.store.SetWaiting(sctx, w); err != nil {
		if ctx.Err() == nil {
			l.log.Error("record wait state", tint.Err(err))
			sleep(ctx, retryDelay(1))
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
