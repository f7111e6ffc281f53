package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// The reports service of step 4 consumes job.completed through its inbox
// and, in the same transaction, enqueues report.ready for the mailer. Its
// tables live in a schema of its own (<outbox schema>_reports), as a
// consumer's own database would; it enqueues into the job service's outbox
// table, in the same database, so that one relay serves the demo. A real
// reports service would have its own outbox and relay sidecar.

// reportCounts is what the reports service did, for the check.
type reportCounts struct {
	processed  int // deliveries handled: the report written and report.ready enqueued
	duplicates int // deliveries skipped: inbox_claim said false
	lostAcks   int // acks the demo lost on purpose
	rows, jobs int // at the end, in the reports table: rows, and distinct jobs
}

// countReports runs f on the reports service's counts, under their lock:
// the consumer's goroutine writes them while the story reads them.
func (d *demo) countReports(f func(*reportCounts)) {
	d.reportsMu.Lock()
	defer d.reportsMu.Unlock()
	f(&d.reports)
}

// setupReports creates the reports service's schema, its inbox with
// `outbox-relay inbox migrate` (OUTBOX_INBOX_TABLE is set for the relay's
// commands) and its reports table, and empties what an earlier run left.
func (d *demo) setupReports(ctx context.Context) error {
	if err := d.relayCommand(ctx, "setup", "inbox", "migrate"); err != nil {
		return err
	}
	// No unique job_id, on purpose: a job handled twice would show as two
	// rows. The inbox is what keeps it to one.
	_, err := d.pool.Exec(ctx, "create table if not exists "+d.reportsTable+
		" (job_id bigint not null, result int not null, written_at timestamptz not null default now())")
	if err == nil {
		_, err = d.pool.Exec(ctx, "truncate "+d.reportsTable+", "+d.reportsInbox.Ident())
	}
	if err != nil {
		return fmt.Errorf("reports service: create its table: %w", err)
	}
	d.reporter, err = inbox.NewConsumer(d.pool, inbox.Config{Name: "reports", Inbox: inbox.New(d.reportsInbox)})
	return err
}

// lostAck stands for a consumer that dies after its COMMIT and before its
// ack reaches RabbitMQ: the broker keeps the message and delivers it again.
// The demo nacks it with requeue instead of acking, which the broker
// answers the same way.
type lostAck struct{ amqp.Acknowledger }

func (a lostAck) Ack(tag uint64, multiple bool) error { return a.Nack(tag, multiple, true) }

// report handles one job.completed delivery of the reports service with
// inbox.Consumer.Handle: claim its message_id, write the report and
// enqueue report.ready in one transaction, commit, then ack. The first
// delivery after d.loseAck was set loses its ack.
func (d *demo) report(ctx context.Context, m amqp.Delivery) {
	var ev jobEvent
	_ = json.Unmarshal(m.Body, &ev) // a bad payload shows as job 0
	lose := d.loseAck.CompareAndSwap(true, false)
	if lose {
		m.Acknowledger = lostAck{m.Acknowledger}
		d.countReports(func(s *reportCounts) { s.lostAcks++ })
	}
	var next outbox.MessageID
	outcome, err := d.reporter.Handle(ctx, m, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "insert into "+d.reportsTable+" (job_id, result) values ($1, $2)", ev.JobID, ev.Result); err != nil {
			return err
		}
		body, _ := json.Marshal(ev) // cannot fail
		next = outbox.NewMessageID()
		d.ledger.enqueued(next, []string{"mailer"})
		_, err := d.writer.Enqueue(ctx, tx, outbox.Message{
			MessageID: next, Exchange: d.jobsExchange, RoutingKey: "report.ready",
			PartitionKey: "job-" + strconv.FormatInt(ev.JobID, 10), ContentType: "application/json", Payload: body,
			Headers: map[string]any{headerCommittedAt: time.Now().UnixMicro()},
		})
		return err
	})
	if next != (outbox.MessageID{}) {
		d.ledger.ended(next, outcome == inbox.Processed)
	}
	switch outcome {
	case inbox.Processed:
		d.countReports(func(s *reportCounts) { s.processed++ })
		d.say("reports", "job %d completed: inbox_claim true -> report written, report.ready enqueued, one transaction committed", ev.JobID)
	case inbox.Duplicate:
		d.countReports(func(s *reportCounts) { s.duplicates++ })
		d.say("reports", "job %d completed, delivered again (redelivered=%t): inbox_claim false -> skipped and acked, nothing written",
			ev.JobID, m.Redelivered)
	}
	if lose {
		d.say("reports", "   ...and it crashes before its ack reaches RabbitMQ (simulated): the broker will deliver the event again")
	}
	if err != nil {
		d.say("reports", "%s: %v", outcome, err)
	}
}

// readReports reads the reports table for the check: the rows, and the
// distinct jobs among them. Before setupReports finished there is none.
func (d *demo) readReports(ctx context.Context) error {
	if d.reporter == nil {
		return nil
	}
	var rows, jobs int
	if err := d.pool.QueryRow(ctx, "select count(*), count(distinct job_id) from "+d.reportsTable).Scan(&rows, &jobs); err != nil {
		return fmt.Errorf("count reports: %w", err)
	}
	d.countReports(func(s *reportCounts) { s.rows, s.jobs = rows, jobs })
	return nil
}
