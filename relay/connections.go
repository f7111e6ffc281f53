package relay

import (
	"context"
	"errors"
	"log/slog"
	"slices"
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
	// A session whose statement failed is not trusted with the locks it
	// may still hold: closed, it gives them up, and the relay starts over
	// from what pg_locks shows.
	l.lis.Close(context.Background())
	l.loseLeadership()
	l.lisNextTry = time.Time{}
}

// loseLeadership forgets the partitions and the membership the listener's
// session held: it is gone, or closed, and its locks with it.
func (l *loop) loseLeadership() {
	if l.leader {
		l.log.Warn("leadership lost", slog.Any("partitions", l.owned))
	}
	if len(l.held()) > 0 {
		l.metrics.partitionChanges.WithLabelValues("released").Add(float64(len(l.held())))
	}
	l.owned, l.gained, l.gainedAt = nil, nil, time.Time{}
	l.member, l.nextLook, l.moving = false, time.Time{}, false
	l.leader = false
	l.store.SetOwner(0, nil)
	l.prog.setLeader(0)
	l.waiting, l.armed, l.asleep = false, false, false // armed again once leader again
	l.metrics.leader.Set(0)
	l.metrics.partitionsOwned.Set(0)
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
	switch {
	case se.kind == setupReadOnly:
		// Sessions opened while the server was read-only stay so: open
		// new ones once it accepts writes.
		l.resetPool()
	case se.kind == setupPooler && l.sessionsOwn.Swap(false):
		// The URL reached PostgreSQL before and a transaction pooler now
		// (a failover, a DNS change): the pool's new sessions must not
		// set the relay's settings (sequential scans off, no
		// synchronous commit) on server connections the application
		// shares, and the sessions that did go.
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

// fenceWait bounds one try of a new owner's wait for the claims before it;
// it logs and tries again after that. The old owner's batches settle
// within two confirm timeouts unless its broker is blocked or crawling.
func fenceWait(cfg Config) time.Duration { return 2*cfg.ConfirmTimeout + dbTimeout }

// brokerGone is how long a relay may go without a broker connection
// before it gives its partitions up and leaves the members, so that relays
// that reach the broker do the work. It takes partitions again once it has
// one. Shorter than a broker node's restart would move partitions at every
// blip.
const brokerGone = 10 * time.Second

// ensurePublisher (re)connects to the broker, with back-off. A relay that
// stays without one for brokerGone leaves the members.
func (l *loop) ensurePublisher(ctx context.Context) bool {
	if l.pub.Connected() {
		l.noBrokerSince = time.Time{}
		return true
	}
	now := l.clock.Now()
	if l.noBrokerSince.IsZero() {
		l.noBrokerSince = now
	}
	if l.member && now.Sub(l.noBrokerSince) >= brokerGone {
		l.leave(ctx, "no broker connection")
	}
	if l.amqpConnects == 0 && l.amqpFailures == 0 {
		l.placeOnBroker(ctx)
	}
	l.metrics.connUp.WithLabelValues(connAMQP).Set(0)
	if err := l.pub.Connect(ctx); err != nil {
		if ctx.Err() != nil {
			return false
		}
		l.amqpFailures++
		l.log.Error("broker connect failed", tint.Err(err), slog.Int("attempt", l.amqpFailures))
		d := retryDelay(l.amqpFailures)
		if l.member {
			// Wake when brokerGone runs out, not up to a back-off later.
			d = min(d, max(0, l.noBrokerSince.Add(brokerGone).Sub(l.clock.Now())))
		}
		l.clock.Sleep(ctx, d)
		return false
	}
	l.amqpFailures = 0
	l.noBrokerSince = time.Time{}
	l.amqpConnects++
	if l.amqpConnects > 1 {
		l.metrics.reconnects.WithLabelValues(connAMQP).Inc()
	}
	l.metrics.connUp.WithLabelValues(connAMQP).Set(1)
	if err := l.lis.SetBroker(ctx, l.pub.Node()); err != nil {
		l.log.Debug("could not show the broker node in application_name", tint.Err(err))
	}
	return true
}

// placeOnBroker makes the relay's first broker node its rank among the
// table's relays modulo the number of nodes, so that relays on one host
// (which share a name) spread over a cluster; on a node loss each moves
// on to the next node as before.
func (l *loop) placeOnBroker(ctx context.Context) {
	v, err := l.lis.Look(ctx)
	if err != nil {
		return // the first node it is; the look fails again in share
	}
	if rank := slices.Index(v.relays, l.lis.PID()); rank >= 0 {
		l.pub.StartAt(rank)
	}
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

// leaveStopping is leave's reason on shutdown.
const leaveStopping = "stopping"

// leave gives every partition up and leaves the members; the relay takes
// partitions again once share joins it back. Nothing is in flight between
// two steps of the loop.
func (l *loop) leave(ctx context.Context, why string) {
	for _, p := range l.held() {
		if err := l.lis.Release(ctx, p); err != nil {
			l.shareFailed(ctx, err)
			return
		}
		l.metrics.partitionChanges.WithLabelValues("released").Inc()
	}
	if err := l.lis.Member(ctx, false); err != nil {
		l.shareFailed(ctx, err)
		return
	}
	if l.waiting {
		l.setWaiting(ctx, false) // others may sleep: the flag stays up for them
	}
	level := slog.LevelWarn
	if why == leaveStopping {
		level = slog.LevelInfo
	}
	l.log.Log(ctx, level, "gave partitions up and left the members", slog.String("reason", why), slog.Any("partitions", l.held()))
	l.owned, l.gained = nil, nil
	l.setOwned(ctx, nil)
	l.member = false
}
