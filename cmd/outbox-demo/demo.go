package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/relay"
)

// Timing of the demo's phases.
const (
	setupTimeout = 30 * time.Second // connect, migrate, declare
	leaderWait   = 30 * time.Second // relay started until it holds the leader lock
	graceWait    = 10 * time.Second // production stopped until every committed event arrived
)

// demo is one run of the demo.
type demo struct {
	opts      *options
	names     names
	out       *printer
	ledger    *ledger
	relay     *relayProc
	audit     *auditService // nil without the poison episode
	lagEvents chan lagEvent // to the lag reporter, from the jobs service and the relay
}

// run sets everything up, produces until ctx is done, waits for in-flight
// events (until hurry is done, at most graceWait), then stops the relay and
// the consumers in that order. Every goroutine it starts has returned when
// it returns.
func (d *demo) run(ctx, hurry context.Context) error {
	err := d.runAll(ctx, hurry)
	if err != nil && d.relay != nil && len(d.relay.runs) == 0 && ctx.Err() != nil {
		// A Ctrl-C during set-up fails whatever step was under way.
		return errors.New("interrupted during set-up")
	}
	return err
}

// runAll is run, with set-up errors as they are.
func (d *demo) runAll(ctx, hurry context.Context) error {
	o := d.opts
	path, err := findRelay(o.relayPath)
	if err != nil {
		return err
	}
	d.relay = newRelayProc(path, o, d.out)
	if o.metricsAddr != "" {
		// The relay would fail on a busy port with a less helpful message.
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("-metrics-addr %s is not free (another relay?): pass another address, or -metrics-addr '' for none", o.metricsAddr)
		}
		_ = ln.Close()
	}
	d.intro(path)

	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	pool, err := pgxpool.New(sctx, o.env.DatabaseURL)
	if err == nil {
		err = pool.Ping(sctx)
	}
	if err != nil {
		// pgx redacts passwords in its errors.
		return fmt.Errorf("connect to PostgreSQL (OUTBOX_DATABASE_URL): %w", err)
	}
	defer pool.Close()
	if err := d.relay.migrate(sctx); err != nil {
		return err
	}
	if _, err := pool.Exec(sctx, `create table if not exists `+d.names.jobsTable+` (
		id         bigint generated always as identity primary key,
		state      text not null,
		result     int,
		updated_at timestamptz not null default now())`); err != nil {
		return fmt.Errorf("create jobs table: %w", err)
	}
	subs, err := d.setupBroker()
	defer func() {
		for _, s := range subs {
			s.close()
		}
	}()
	if err != nil {
		return err
	}
	cancel()

	// Nothing below is cut short by ctx, which only ends production: the
	// relay and the consumers keep going until the last event is in.
	g, gctx := errgroup.WithContext(context.WithoutCancel(ctx))
	consumersCtx, stopConsumers := context.WithCancel(gctx)
	defer stopConsumers()
	for _, s := range subs {
		g.Go(func() error { return s.run(consumersCtx) })
	}
	relayCtx, stopRelay := context.WithCancel(gctx)
	defer stopRelay()
	relayDone := make(chan struct{})
	pauses := make(chan pause)
	d.lagEvents = make(chan lagEvent, 8)
	g.Go(func() error {
		defer close(relayDone)
		return d.relay.run(relayCtx, pauses, d.lagEvents)
	})

	err = d.produce(ctx, hurry, gctx, relayCtx, g, pool, pauses)
	stopRelay()
	<-relayDone
	stopConsumers()
	return errors.Join(err, g.Wait())
}

// produce waits for the relay to lead, runs the jobs service, the lag
// reporter and the operator episodes until ctx is done, then waits for an
// episode under way and for in-flight events. It returns nil when gctx ends
// early: the error that ended it comes from the group.
func (d *demo) produce(ctx, hurry, gctx, relayCtx context.Context, g *errgroup.Group, pool *pgxpool.Pool, pauses chan<- pause) error {
	if err := d.waitForLeader(ctx, gctx, pool); err != nil || ctx.Err() != nil || gctx.Err() != nil {
		return err
	}
	writer, err := outbox.NewWriter(d.names.table.String())
	if err != nil {
		return err
	}
	lag := &lagReporter{pool: pool, table: d.names.table, metricsAddr: d.opts.metricsAddr, out: d.out, events: d.lagEvents}
	g.Go(func() error { return lag.run(relayCtx) })

	prodCtx, stopProd := context.WithCancel(gctx)
	defer stopProd()
	defer context.AfterFunc(ctx, stopProd)()
	if d.opts.duration > 0 {
		var cancel context.CancelFunc
		prodCtx, cancel = context.WithTimeout(prodCtx, d.opts.duration)
		defer cancel()
	}
	poisoned := make(chan poisonRow, 1)
	j := &jobs{
		pool: pool, writer: writer, names: d.names, ledger: d.ledger, out: d.out,
		burstEvery: d.opts.burstEvery, burstSize: d.opts.burstSize, events: d.lagEvents,
		poisonAt: d.opts.poisonAt, poisoned: poisoned,
	}
	prodDone := make(chan struct{})
	g.Go(func() error {
		defer close(prodDone)
		return j.run(prodCtx)
	})
	if d.opts.pauseEvery > 0 {
		g.Go(func() error { return d.schedulePauses(prodCtx, pauses) })
	}
	watchDone := make(chan struct{})
	if d.audit != nil {
		w := &poisonWatch{
			pool: pool, table: d.names.table, tableArg: d.opts.tableArg, exchange: d.names.audit,
			relay: d.relay, audit: d.audit, out: d.out,
			fixAfter: d.opts.poisonFixAfter, retryAfter: d.opts.poisonRetryAfter, rows: poisoned,
		}
		g.Go(func() error {
			defer close(watchDone)
			return w.run(relayCtx, prodDone)
		})
	} else {
		close(watchDone)
	}
	<-prodDone
	if gctx.Err() != nil {
		return nil
	}
	d.waitForEpisode(hurry, gctx, watchDone)
	d.waitForStragglers(hurry, gctx)
	return nil
}

// schedulePauses asks the relay to stop for -pause-for every -pause-every,
// the first time after two thirds of it, until ctx is done. A pause ends
// early when ctx is done.
func (d *demo) schedulePauses(ctx context.Context, pauses chan<- pause) error {
	t := time.NewTimer(d.opts.pauseEvery * 2 / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil
		}
		select {
		case pauses <- pause{length: d.opts.pauseFor, cut: ctx.Done()}:
		case <-ctx.Done():
			return nil
		}
		t.Reset(d.opts.pauseEvery)
	}
}

// waitForEpisode waits, at most graceWait, for the poison episode to end
// once production has stopped: its watch then fixes the cause and retries
// the row at once, so that the final wait includes its event.
func (d *demo) waitForEpisode(hurry, gctx context.Context, watchDone <-chan struct{}) {
	deadline := time.NewTimer(graceWait)
	defer deadline.Stop()
	select {
	case <-watchDone:
	case <-deadline.C:
		d.out.printf("ops", "the poison episode did not end within %s", graceWait)
	case <-hurry.Done():
	case <-gctx.Done():
	}
}

// waitForLeader waits until a relay holds the table's leader lock, so that
// the first events do not count the relay's start-up as latency.
func (d *demo) waitForLeader(ctx, gctx context.Context, pool *pgxpool.Pool) error {
	deadline := time.NewTimer(leaderWait)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		qctx, cancel := context.WithTimeout(gctx, 5*time.Second)
		st, err := relay.ReadStatus(qctx, pool, d.names.table)
		cancel()
		if err == nil && st.Leader != nil {
			d.out.printf("demo", "the relay leads %s (PostgreSQL backend pid %d); starting the services", d.names.table, st.Leader.PID)
			return nil
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			if err != nil {
				return fmt.Errorf("relay status: %w", err)
			}
			return fmt.Errorf("the relay did not take the leader lock of %s within %s", d.names.table, leaderWait)
		case <-ctx.Done():
			return nil
		case <-gctx.Done():
			return nil
		}
	}
}

// waitForStragglers waits until every committed event has reached all of its
// consumers, at most graceWait.
func (d *demo) waitForStragglers(hurry, gctx context.Context) {
	n := d.ledger.outstanding()
	if n == 0 {
		d.out.printf("demo", "production stopped; every committed event has arrived")
		return
	}
	d.out.printf("demo", "production stopped; waiting up to %s for %d deliveries in flight (Ctrl-C again to skip)", graceWait, n)
	deadline := time.NewTimer(graceWait)
	defer deadline.Stop()
	start := time.Now()
	for {
		select {
		case <-d.ledger.changed:
			if d.ledger.outstanding() == 0 {
				d.out.printf("demo", "every committed event arrived %s later", time.Since(start).Round(time.Millisecond))
				return
			}
		case <-deadline.C:
			d.out.printf("demo", "gave up waiting: %d deliveries still missing", d.ledger.outstanding())
			return
		case <-hurry.Done():
			d.out.printf("demo", "stopped waiting: %d deliveries still missing", d.ledger.outstanding())
			return
		case <-gctx.Done():
			return
		}
	}
}
