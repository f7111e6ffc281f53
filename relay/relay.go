package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lmittmann/tint"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/schema"
)

// standbyInterval is how often a standby relay tries to become the leader.
const standbyInterval = time.Second

// dbTimeout bounds a claim, a settle or a state update, so that a
// PostgreSQL that stops answering cannot hang the relay.
const dbTimeout = 30 * time.Second

// Relay moves committed outbox rows to RabbitMQ. Create it with New and run
// it with Run.
type Relay struct {
	cfg      Config
	log      *slog.Logger
	metrics  *metrics
	poolCfg  *pgxpool.Config
	lisCfg   *pgx.ConnConfig
	amqpURIs []amqp.URI
	appName  string // application_name and AMQP connection name: Name@hostname
	ready    atomic.Bool
}

// New checks cfg and returns a relay. It connects to nothing: Run does.
func New(cfg Config) (*Relay, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		// pgx redacts the password in its parse errors.
		return nil, fmt.Errorf("database URL: %w", err)
	}
	appName := cfg.Name
	if h, err := os.Hostname(); err == nil {
		appName = cfg.Name + "@" + h
	}
	if len(appName) > 63 {
		appName = appName[:63]
	}
	// Settings the relay's sessions need are set after connecting, not sent
	// as startup parameters (see sessionSettings); application_name is one
	// PgBouncer accepts.
	fromURL := maps.Clone(poolCfg.ConnConfig.RuntimeParams)
	poolCfg.ConnConfig.RuntimeParams["application_name"] = appName
	after := applySessionSettings(cfg, fromURL)
	if prev := poolCfg.ConnConfig.AfterConnect; prev != nil {
		poolCfg.ConnConfig.AfterConnect = func(ctx context.Context, c *pgconn.PgConn) error {
			if err := prev(ctx, c); err != nil {
				return err
			}
			return after(ctx, c)
		}
	} else {
		poolCfg.ConnConfig.AfterConnect = after
	}
	m := newMetrics(cfg.Registerer)
	poolCfg.ConnConfig.Tracer = acquireTracer{log: cfg.Logger, metrics: m}
	poolCfg.ConnConfig.DialFunc = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 5 * time.Second}).DialContext

	// A drain holds two, one per batch on the wire (the next claim reuses
	// the settled batch's); then the gauges, a VACUUM and the wake-up flag.
	poolCfg.MaxConns = max(poolCfg.MaxConns, 5)
	// pgxpool pings a connection idle for a second before handing it out:
	// at every poll of an idle relay, a round trip for nothing. A broken
	// connection fails the claim instead, which is retried.
	poolCfg.ShouldPing = func(_ context.Context, p pgxpool.ShouldPingParams) bool { return p.IdleDuration > time.Minute }
	lisCfg := poolCfg.ConnConfig.Copy()
	// On the pool's connections, a query whose context ends is cancelled by
	// asking the server, and the socket is broken only if the server has
	// not answered 3s later. pgx's default breaks the socket at once: when
	// that cut a message in half, the server kept waiting for the rest, and
	// closing the pool at shutdown waited 15s for it (pgconn's asyncClose).
	// The listener keeps the default: its waits for a notification end by
	// their deadline, with no query for the server to cancel.
	poolCfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 3 * time.Second}
	}

	var uris []amqp.URI
	for i, u := range splitURLs(cfg.AMQPURL) {
		uri, err := amqp.ParseURI(u)
		if err != nil {
			return nil, fmt.Errorf("AMQP URL #%d: %w", i+1, RedactURIError(err))
		}
		uris = append(uris, uri)
	}
	if len(uris) == 0 {
		return nil, errors.New("AMQP URL: empty")
	}
	return &Relay{cfg: cfg, log: cfg.Logger, metrics: m, poolCfg: poolCfg, lisCfg: lisCfg,
		amqpURIs: uris, appName: appName}, nil
}

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

// Run relays rows until ctx is done. Then it stops claiming, waits up to
// ShutdownTimeout for the batch in flight to be confirmed and settled, closes
// its connections and returns nil. It returns an error only for a problem it
// cannot outlast by retrying; lost connections are retried with back-off.
func (r *Relay) Run(ctx context.Context) error {
	pool, err := pgxpool.NewWithConfig(ctx, r.poolCfg)
	if err != nil {
		return fmt.Errorf("create pool: %w", err)
	}
	defer pool.Close()

	table, err := r.resolveTable(ctx, pool)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	l := &loop{
		Relay: r,
		store: newStore(pool, table, r.cfg.MaxAttempts, func(n int) time.Duration {
			return backoff(n, r.cfg.RetryBackoff, r.cfg.RetryBackoffMax)
		}),
		pub:  newPublisher(r.cfg, r.appName),
		lis:  newListener(r.lisCfg, table.Channel(), probeSession(pool)),
		vac:  newVacuumer(pool, table.Ident(), r.cfg.VacuumEvery, r.log),
		idle: make(chan struct{}, 1),
		pool: pool,
		prog: &progress{},
	}
	r.log.Info("relay starting", slog.String("table", table.String()), slog.String("channel", table.Channel()),
		slog.Int("batch_size", r.cfg.BatchSize), slog.Duration("poll_interval", r.cfg.PollInterval))

	// Batches in flight finish under work, which outlives ctx by at most
	// ShutdownTimeout so that confirms can arrive and rows be settled.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	stopped := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-stopped:
			return
		case <-ctx.Done():
		}
		t := time.NewTimer(r.cfg.ShutdownTimeout)
		defer t.Stop()
		select {
		case <-stopped:
		case <-t.C:
			r.log.Warn("shutdown timeout passed with a batch in flight; its rows will be published again")
			cancelWork()
		}
	}()
	defer func() {
		close(stopped)
		wg.Wait()
		cancelWork()
	}()

	wg.Add(2)
	go func() {
		defer wg.Done()
		r.refreshGauges(ctx, pool, newGaugeQueries(table), l.idle, l.prog, l.store.leaderPID.Load)
	}()
	go func() {
		defer wg.Done()
		l.vac.run(ctx)
	}()
	l.run(ctx, work)
	r.ready.Store(false)

	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if l.waiting {
		_ = l.store.SetWaiting(cctx, false)
	}
	l.pub.Close()
	l.lis.Close(cctx)
	r.metrics.leader.Set(0)
	r.metrics.connUp.WithLabelValues(connAMQP).Set(0)
	r.metrics.connUp.WithLabelValues(connListener).Set(0)
	r.log.Info("relay stopped")
	return nil
}

// resolveTable waits for the database and the outbox table, so that a relay
// started before PostgreSQL or before `migrate` comes up on its own.
func (r *Relay) resolveTable(ctx context.Context, pool *pgxpool.Pool) (t schema.Table, err error) {
	// Simple protocol: behind a transaction-mode pooler, prepared
	// statements clash, and the listener's check should be what names it.
	q := simpleQuerier{pool}
	for attempt := 1; ; attempt++ {
		t, err = r.cfg.Table.Resolve(ctx, q)
		if err == nil {
			var exists bool
			// The wake-up flag is the newest object of the schema: with it
			// present, every migration this relay needs has been applied.
			err = q.QueryRow(ctx, "select to_regclass($1) is not null and to_regclass($2) is not null",
				t.Ident(), t.Derived("relay_waiting")).Scan(&exists)
			if err == nil && !exists {
				err = fmt.Errorf("table %s or its wake-up flag %s does not exist: run `outbox-relay migrate`", t.Ident(), t.Derived("relay_waiting"))
			}
		}
		if err == nil {
			return t, nil
		}
		r.log.Error("database not ready, retrying", tint.Err(withHint(err)), slog.Int("attempt", attempt))
		if !sleep(ctx, retryDelay(attempt)) {
			return t, ctx.Err()
		}
	}
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
			continue
		}
		if l.pub.Blocked() {
			sleep(ctx, 200*time.Millisecond)
			continue
		}

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
			l.log.Error("batch failed", tint.Err(withHint(err)), slog.Int("rows", n))
			if !l.pub.Connected() {
				l.log.Warn("broker connection lost")
				l.metrics.connUp.WithLabelValues(connAMQP).Set(0)
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
			slog.String("message_id", firstErr.Row.MessageID), slog.String("exchange", firstErr.Row.Exchange),
			slog.String("routing_key", firstErr.Row.RoutingKey), slog.Int("attempt", firstErr.Row.Attempts+1),
			slog.String("reason", firstErr.Reason), tint.Err(firstErr.Err))
	}
	for _, id := range st.dead {
		for _, res := range results {
			if res.Row.ID == id {
				l.log.Warn("row parked dead", slog.Int64("id", id), slog.String("message_id", res.Row.MessageID),
					slog.String("exchange", res.Row.Exchange), slog.String("routing_key", res.Row.RoutingKey),
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
	}
	l.leader = false
	l.store.leaderPID.Store(0)
	l.prog.setLeader(false)
	l.waiting = false // re-announce once leader again
	l.metrics.leader.Set(0)
}

// ensureListener (re)connects the LISTEN connection, with back-off. It
// returns true when the connection is up.
func (l *loop) ensureListener(ctx context.Context) bool {
	if l.lis.Connected() {
		return true
	}
	l.loseLeadership()
	if d := time.Until(l.lisNextTry); d > 0 {
		sleep(ctx, d)
		return false
	}
	if err := l.lis.Connect(ctx); err != nil {
		if ctx.Err() != nil {
			return false
		}
		l.lisFailures++
		l.lisNextTry = time.Now().Add(retryDelay(l.lisFailures))
		l.listenerFailed(err)
		return false
	}
	l.lisSetupErr = ""
	l.lisConnects++
	if l.lisConnects > 1 {
		l.metrics.reconnects.WithLabelValues(connListener).Inc()
	}
	l.log.Info("listener connected", slog.String("channel", l.lis.channel), slog.Int("pid", int(l.lis.PID())))
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
		l.pool.Reset()
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
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got, err := l.lis.TryLead(lctx, l.store.table.LockKey("leader"))
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
	l.leader = true
	// The server's pid of the LISTEN session, not the startup data's: a
	// pooler fills that with a number of its own.
	l.store.leaderPID.Store(l.lis.PID())
	l.prog.setLeader(true)
	l.metrics.leader.Set(1)
	l.log.Info("leadership gained")
	// A leader killed while it waited leaves the flag set, and writers
	// would notify nobody until it is cleared. This one claims next.
	l.setWaiting(ctx, false)
	return true
}

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
		sleep(ctx, retryDelay(l.amqpFailures))
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

// Ready reports whether the relay's connections are up: the LISTEN
// connection (leader or standby) and, on the leader, the broker connection.
func (r *Relay) Ready() bool {
	return r.ready.Load()
}
