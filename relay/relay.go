package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
	appName  string            // application_name and AMQP connection name: Name@hostname
	fromURL  map[string]string // runtime parameters the database URL sets
	// ready says the connections are up (see Status): the LISTEN
	// connection and, on the leader, the broker's. The loop writes it.
	ready atomic.Bool
	// prog is what the loop reports of its work; run what the probes know
	// of the current Run; liveBound is Live's bound (see livenessBound).
	prog      *progress
	run       atomic.Pointer[runState]
	liveBound time.Duration
	// sessionsOwn says the listener proved that the relay's database
	// sessions are its own (not a transaction pooler's): the pool's
	// sessions get the relay's settings from then on.
	sessionsOwn atomic.Bool
	// deadAfter is T, how long the server may take to drop a silent
	// session of the relay, and claimAgeMax D, the claim age bound below
	// it (see deadSession).
	deadAfter, claimAgeMax time.Duration
}

// New checks cfg and returns a relay. It connects to nothing: Run does.
func New(cfg Config) (*Relay, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// Both URLs parsed in validate.
	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	uris, err := parseAMQPURLs(cfg.AMQPURL)
	if err != nil {
		return nil, err
	}
	appName := cfg.Name
	if h, err := os.Hostname(); err == nil {
		appName = cfg.Name + "@" + h
	}
	if len(appName) > 63 {
		appName = appName[:63]
	}
	r := &Relay{prog: &progress{}}
	reg := labelTable(cfg.Registerer, cfg.Table)
	m := newMetrics(reg)
	if reg != nil {
		reg.MustRegister(newBuildInfo(cfg.Version, cfg.Revision))
	}
	poolCfg, lisCfg, fromURL := r.sessionConfigs(poolCfg, appName, acquireTracer{log: cfg.Logger, metrics: m})
	r.fromURL = fromURL
	ds, err := deadSessionFrom(fromURL) // checked in validate
	if err != nil {
		return nil, err
	}
	r.deadAfter, r.claimAgeMax = ds.detectAfter(), ds.claimAgeMax()
	r.liveBound = livenessBound(cfg, 1+len(lisCfg.Fallbacks))

	r.cfg, r.log, r.metrics, r.poolCfg, r.lisCfg, r.amqpURIs, r.appName = cfg, cfg.Logger, m, poolCfg, lisCfg, uris, appName
	return r, nil
}

// Run relays rows until ctx is done. Then it stops claiming, waits up to
// ShutdownTimeout for the batch in flight to be confirmed and settled, closes
// its connections and returns nil. It returns an error only for a problem it
// cannot outlast by retrying; lost connections are retried with back-off.
func (r *Relay) Run(ctx context.Context) (err error) {
	st := r.begin(ctx.Done())
	defer func() { st.end(err) }()
	pool, err := pgxpool.NewWithConfig(ctx, r.poolCfg)
	if err != nil {
		return fmt.Errorf("create pool: %w", err)
	}
	defer pool.Close()

	table, props, err := r.resolveTable(ctx, pool)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	store := newStore(pool, table, r.cfg.MaxAttempts, func(n int) time.Duration {
		return backoff(n, r.cfg.RetryBackoff, r.cfg.RetryBackoffMax)
	})
	store.setProperties(props)
	store.maxBytes, store.maxRowBytes = int64(r.cfg.BatchBytes), int64(r.cfg.MaxMessageSize)
	l := &loop{
		Relay: r,
		store: store,
		pub:   newPublisher(r.cfg, r.amqpURIs, r.appName),
		lis: newListener(r.lisCfg, table, probeSession(pool),
			acquireTracer{log: r.log, metrics: r.metrics},
			func(ctx context.Context, c *pgconn.PgConn) error {
				if !r.sessionsOwn.Swap(true) {
					pool.Reset() // sessions opened before it have no settings
				}
				return applySessionSettings(ctx, c, r.fromURL)
			}),
		clock:     wallClock{},
		vac:       newVacuumer(pool, table.Ident(), r.cfg.VacuumEvery, r.log),
		channel:   table.Channel(),
		idle:      make(chan struct{}, 1),
		resetPool: pool.Reset,
		prog:      r.prog,
	}
	blocked := l.pub.Blocked
	r.prog.blocked.Store(&blocked)
	r.log.Info("relay starting", slog.String("table", table.String()), slog.String("channel", table.Channel()),
		slog.Int("batch_size", r.cfg.BatchSize), slog.Duration("poll_interval", r.cfg.PollInterval),
		slog.Duration("dead_session_after", r.deadAfter), slog.Duration("claim_age_max", r.claimAgeMax))

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
		r.refreshGauges(ctx, pool, newGaugeQueries(table), l.idle, l.prog)
	}()
	go func() {
		defer wg.Done()
		l.vac.run(ctx)
	}()
	fatal := l.run(ctx, work)
	r.ready.Store(false)

	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if l.waiting {
		_ = store.SetWaiting(cctx, false)
	}
	if l.member && l.lis.Connected() {
		// Hand the partitions over now, telling the other relays, rather
		// than leave them to find out at their next look.
		l.leave(cctx, leaveStopping)
	}
	l.pub.Close()
	l.lis.Close(cctx)
	r.metrics.leader.Set(0)
	r.metrics.connUp.WithLabelValues(connAMQP).Set(0)
	r.metrics.connUp.WithLabelValues(connListener).Set(0)
	if fatal != nil {
		r.log.Error("relay stopped", tint.Err(fatal))
		return fatal
	}
	r.log.Info("relay stopped")
	return nil
}

// resolveTable waits for the database and the outbox table, so that a relay
// started before PostgreSQL or before `migrate` comes up on its own. It
// reports whether the table has the AMQP property columns, and refuses a
// table whose schema is newer than this relay (a *SchemaTooNewError).
func (r *Relay) resolveTable(ctx context.Context, pool *pgxpool.Pool) (t schema.Table, props bool, err error) {
	// Simple protocol: behind a transaction-mode pooler, prepared
	// statements clash, and the listener's check should be what names it.
	q := simpleQuerier{pool}
	for attempt := 1; ; attempt++ {
		t, err = r.cfg.Table.Resolve(ctx, q)
		if err == nil {
			var exists bool
			// The wake-up flag (002) is the newest object the relay cannot
			// do without; the property columns (005) it can.
			err = q.QueryRow(ctx, "select to_regclass($1) is not null and to_regclass($2) is not null",
				t.Ident(), t.Derived("relay_waiting")).Scan(&exists)
			if err == nil && !exists {
				err = fmt.Errorf("table %s or its wake-up flag %s does not exist: run `outbox-relay migrate`", t.Ident(), t.Derived("relay_waiting"))
			}
		}
		var version int
		if err == nil {
			version, props, err = checkSchema(ctx, q, t)
		}
		if err == nil && r.cfg.Partitions != 0 {
			err = r.checkPartitions(ctx, q, t)
		}
		var tooNew *SchemaTooNewError
		var mismatch *PartitionsMismatchError
		if errors.As(err, &tooNew) || errors.As(err, &mismatch) {
			return t, false, err
		}
		if err == nil {
			r.warnPendingMigrations(version, props)
			return t, props, nil
		}
		r.log.Error("database not ready, retrying", tint.Err(withHint(err)), slog.Int("attempt", attempt))
		if !sleep(ctx, retryDelay(attempt)) {
			return t, false, ctx.Err()
		}
		r.prog.stepDone()
	}
}

// warnPendingMigrations says so when the table's schema is older than this
// relay: it runs, but what the missing migrations bring is missing.
// Without the property columns (005) it claims without them, and switches
// to them when they appear (see properties.go).
func (r *Relay) warnPendingMigrations(have int, props bool) {
	if have < 0 {
		r.log.Warn("the relay's role may not read the table's migrations: run `outbox-relay migrate` (migration 005 lets every role read them)",
			slog.Bool("property_columns", props))
		return
	}
	if want := schema.LatestVersion(); have < want {
		r.log.Warn("the table's schema is older than this relay: run `outbox-relay migrate`",
			slog.Int("schema_version", have), slog.Int("relay_version", want), slog.Bool("property_columns", props))
	}
}

// PartitionsMismatchError is a relay told OUTBOX_PARTITIONS that differs
// from the table's number of partitions: it refuses to start.
type PartitionsMismatchError struct {
	Table       schema.Table
	Configured  int
	TableHas    int
	TableRecord bool // the table records its P (migration 007)
}

func (e *PartitionsMismatchError) Error() string {
	has := fmt.Sprintf("table %s has %d", e.Table, e.TableHas)
	if !e.TableRecord {
		has += " (it is not migrated to record partitions)"
	}
	return fmt.Sprintf("OUTBOX_PARTITIONS=%d but %s: change the table's with `OUTBOX_PARTITIONS=%d outbox-relay migrate`, "+
		"or set OUTBOX_PARTITIONS=%d, or leave it unset to follow the table", e.Configured, has, e.Configured, e.TableHas)
}

// checkPartitions refuses a table whose P is not the configured one.
func (r *Relay) checkPartitions(ctx context.Context, q simpleQuerier, t schema.Table) error {
	p, recorded, err := schema.ReadPartitions(ctx, q, t)
	if err != nil {
		return err
	}
	if p != r.cfg.Partitions {
		return &PartitionsMismatchError{Table: t, Configured: r.cfg.Partitions, TableHas: p, TableRecord: recorded}
	}
	return nil
}
