package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

const (
	setupTimeout = 30 * time.Second // connect, migrate, declare
	waitTimeout  = 30 * time.Second // for an event, the relay's lead, a dead row
	drainTimeout = 10 * time.Second // at the end, for the last deliveries
)

// demo is one run: what it set up, and what it saw.
type demo struct {
	out           *syncWriter
	ledger        *ledger
	dbURL         string
	table         schema.Table
	metricsAddr   string
	pool          *pgxpool.Pool
	writer        *outbox.Writer
	jobsTable     string // quoted, in the outbox table's schema
	apiQueue      string
	jobsExchange  string
	auditExchange string
	subs          []*subscriber // as in consumers: api, web-1..3, audit, reports, mailer
	relay         harness.Relay
	proc          *harness.Process // the running relay, or nil
	relayExits    []string         // how each relay process exited, e.g. "exit status 0"

	// The reports service of step 4 (reports.go).
	reportsInbox schema.Table // its inbox, in its own schema
	reportsTable string       // quoted, beside its inbox
	reporter     *inbox.Consumer
	reportsOn    bool        // its queue is bound: job.completed is for it too
	loseAck      atomic.Bool // its next delivery loses its ack
	reportsMu    sync.Mutex
	reports      reportCounts // under reportsMu
}

// run plays the story: set-up, the four steps, then the wait for the last
// deliveries and the count of the reports written. When it returns, the
// relay has stopped and every goroutine it started has returned.
func (d *demo) run(ctx context.Context) (err error) {
	defer func() {
		for _, s := range d.subs {
			_ = s.conn.Close()
		}
		if d.pool != nil {
			d.pool.Close()
		}
	}()
	if err := d.setup(ctx); err != nil {
		return err
	}
	// The consumers outlive ctx: the check needs what is on its way.
	consumersCtx, stopConsumers := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	errs := make([]error, len(d.subs))
	for i, s := range d.subs {
		wg.Go(func() { errs[i] = d.consume(consumersCtx, s) })
	}
	defer func() {
		stopConsumers()
		wg.Wait()
		err = errors.Join(append(errs, err)...)
	}()

	err = d.startRelay(ctx)
	for _, step := range []func(context.Context) error{d.stopPolling, d.relayDown, d.poison, d.consumeThenProduce} {
		if err != nil {
			break
		}
		err = step(ctx)
	}
	if err := harness.WaitUntil(context.WithoutCancel(ctx), drainTimeout, "the last deliveries", func() bool { return d.ledger.arrived() }); err != nil {
		d.say("demo", "%v", err)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), setupTimeout)
	defer cancel()
	return errors.Join(err, d.readReports(cctx), d.stopRelay("the demo is over"))
}

// setup connects to PostgreSQL, applies the schema with `outbox-relay
// migrate`, creates the jobs table, clears what an earlier run left in the
// outbox, sets up the reports service's tables, and declares the exchange
// and the queues.
func (d *demo) setup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	var err error
	if d.pool, err = pgxpool.New(ctx, d.dbURL); err == nil {
		err = d.pool.Ping(ctx)
	}
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL (OUTBOX_DATABASE_URL): %w", err) // pgx redacts the password
	}
	if err := d.relayCommand(ctx, "setup", "migrate"); err != nil {
		return err
	}
	_, err = d.pool.Exec(ctx, "create table if not exists "+d.jobsTable+
		" (id bigint generated always as identity primary key, state text not null, result int)")
	if err != nil {
		return fmt.Errorf("create jobs table: %w", err)
	}
	tag, err := d.pool.Exec(ctx, "delete from "+d.table.Ident())
	if err != nil {
		return fmt.Errorf("clear the outbox: %w", err)
	} else if tag.RowsAffected() > 0 {
		d.say("setup", "deleted %d rows an earlier run left in %s", tag.RowsAffected(), d.table)
	}
	if d.writer, err = outbox.NewWriter(d.table.String()); err != nil {
		return err
	}
	if err := d.setupReports(ctx); err != nil {
		return err
	}
	return d.setupBroker()
}

// stopPolling shows both situations users come with.
func (d *demo) stopPolling(ctx context.Context) error {
	d.say("step", "1. STOP POLLING. The api used to poll GET /jobs/{id} until a job was done. Now the job service writes")
	d.say("step", "   the job's row and its job.completed event in one transaction, and the event is pushed to the api.")
	d.say("step", "   EVERY INSTANCE SEES EVERY EVENT: web-1..3, instances of one server, each get it in a queue of their own.")
	for i := 1; i <= 4; i++ {
		if _, err := d.runJob(ctx, i != 3, true); err != nil {
			return err
		}
	}
	return nil
}

// relayDown stops the relay while jobs complete, shows the backlog with
// `outbox-relay status`, and starts the relay again: nothing is lost.
func (d *demo) relayDown(ctx context.Context) error {
	d.say("step", "2. THE RELAY STOPS (a deploy, a crash) while the service keeps committing. The events wait in the table.")
	if err := d.stopRelay("stopping it for a while"); err != nil {
		return err
	}
	var ids []outbox.MessageID
	for range 3 {
		id, err := d.runJob(ctx, true, false)
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	if err := d.relayCommand(ctx, "ops", "status"); err != nil {
		return err
	}
	if err := d.startRelay(ctx); err != nil {
		return err
	}
	start := time.Now()
	if err := d.await(ctx, "the events committed while the relay was down", ids...); err != nil {
		return err
	}
	d.say("demo", "the 3 events committed while the relay was down arrived %s after it started", time.Since(start).Round(time.Millisecond))
	return d.reportLag(ctx, 3)
}

// poison sends an event to an exchange that does not exist yet: the relay
// retries it and parks it dead while the rows behind it flow. The operator
// declares the exchange and retries the row with `outbox-relay dead retry`.
func (d *demo) poison(ctx context.Context) error {
	d.say("step", "3. A POISON ROW. The service sends audit.job to exchange %s, which nobody declared yet.", d.auditExchange)
	d.say("step", "   The relay retries it, then parks it dead; the events behind it keep flowing.")
	id, err := d.transact(ctx, true, outbox.Message{Exchange: d.auditExchange, RoutingKey: "audit.job", Payload: []byte(`{}`)}, []string{"audit"}, nil)
	if err != nil {
		return fmt.Errorf("audit event: %w", err)
	}
	if _, err := d.runJob(ctx, true, true); err != nil {
		return err
	}
	var dead []relay.DeadRow
	if err := harness.WaitUntil(ctx, waitTimeout, "the audit row to be parked dead", func() bool {
		dead, _ = relay.ListDead(ctx, d.pool, d.table, relay.DeadFilter{}, 1)
		return len(dead) > 0
	}); err != nil {
		return err
	}
	d.say("ops", "row %d is dead after %d attempts", dead[0].ID, dead[0].Attempts)
	if err := d.relayCommand(ctx, "ops", "dead", "list"); err != nil {
		return err
	}
	d.say("ops", "the fix: declare exchange %s and bind the audit service's queue to it", d.auditExchange)
	if err := d.fixAudit(); err != nil {
		return err
	}
	if err := d.relayCommand(ctx, "ops", "dead", "retry", strconv.FormatInt(dead[0].ID, 10)); err != nil {
		return err
	}
	return d.await(ctx, "the audit event", id)
}

// consumeThenProduce binds the reports service's queue and completes two
// jobs. The reports service's first delivery loses its ack, so RabbitMQ
// delivers it again: its inbox skips the duplicate, and each job gets one
// report and one report.ready, which the relay publishes to the mailer.
func (d *demo) consumeThenProduce(ctx context.Context) error {
	d.say("step", "4. CONSUME THEN PRODUCE, EFFECTIVELY ONCE. The reports service consumes job.completed: in ONE transaction")
	d.say("step", "   of its own database (schema %s) it claims the event's message_id in its inbox, writes", d.reportsInbox.Schema)
	d.say("step", "   the report and enqueues report.ready for the mailer. Delivery is at least once; the inbox makes the work once.")
	if err := d.bind("reports", "job.completed", d.jobsExchange, ""); err != nil {
		return err
	}
	d.reportsOn = true
	d.loseAck.Store(true)
	for i := 1; i <= 2; i++ {
		if _, err := d.runJob(ctx, true, false); err != nil {
			return err
		}
		// One job at a time, so that its lines stay together.
		err := harness.WaitUntil(ctx, waitTimeout, "the report, its duplicate and report.ready", func() bool {
			var done bool
			d.countReports(func(s *reportCounts) { done = s.processed == i && s.duplicates == s.lostAcks })
			return done && d.ledger.arrived()
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// await waits until every consumer that the events ids are for has them.
func (d *demo) await(ctx context.Context, what string, ids ...outbox.MessageID) error {
	return harness.WaitUntil(ctx, waitTimeout, what, func() bool { return d.ledger.arrived(ids...) })
}
