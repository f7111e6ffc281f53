package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// headerCommittedAt carries the producer's commit time in Unix
// microseconds, so that consumers can show how long an event took. It is
// read just before COMMIT: the times shown include the commit itself.
const headerCommittedAt = "committed_at_us"

// jobEvent is the JSON payload of job.completed.
type jobEvent struct {
	JobID  int64 `json:"job_id"`
	Result int   `json:"result"`
}

// runJob is one job's life. The api's POST /jobs inserts it; the job
// service completes it: it updates the job's row and enqueues job.completed
// (for the api and every web instance) in ONE transaction, and commits, or
// rolls back if !commit, as a crash before COMMIT would: both changes
// happen, or neither does. If wait, the api then waits for the event where
// it used to poll GET /jobs/{id}.
func (d *demo) runJob(ctx context.Context, commit, wait bool) (outbox.MessageID, error) {
	var id int64
	err := d.pool.QueryRow(ctx, "insert into "+d.jobsTable+" (state) values ('running') returning id").Scan(&id)
	if err != nil {
		return outbox.MessageID{}, fmt.Errorf("submit job: %w", err)
	}
	d.say("api", "POST /jobs -> job %d; waiting for its job.completed event instead of polling GET /jobs/%d", id, id)

	ev := jobEvent{JobID: id, Result: 1 + rand.IntN(100)}
	body, _ := json.Marshal(ev) // cannot fail
	msg := outbox.Message{
		Exchange:     d.jobsExchange,
		RoutingKey:   "job.completed",
		PartitionKey: "job-" + strconv.FormatInt(id, 10), // a job's events stay in order
		ContentType:  "application/json",
		Payload:      body,
	}
	to := append([]string{"api"}, webInstances...)
	if d.reportsOn {
		to = append(to, "reports")
	}
	msgID, err := d.transact(ctx, commit, msg, to, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "update "+d.jobsTable+" set state = 'completed', result = $2 where id = $1", id, ev.Result)
		return err
	})
	switch {
	case err != nil:
		return outbox.MessageID{}, fmt.Errorf("complete job %d: %w", id, err)
	case !commit:
		d.say("jobs", "job %d failed before COMMIT: its update and its job.completed rolled back together; no event will come", id)
		return msgID, nil
	}
	d.say("jobs", "job %d completed: row updated and job.completed enqueued in one transaction, committed", id)
	if !wait {
		return msgID, nil
	}
	return msgID, d.await(ctx, fmt.Sprintf("job %d's event", id), msgID)
}

// transact runs change (if any) and enqueues msg, for the consumers to,
// in one transaction, then commits, or rolls back if !commit. The message
// gets its id and the commit-time header here, and enters the ledger
// before the transaction ends, so that no delivery can beat it there.
func (d *demo) transact(ctx context.Context, commit bool, msg outbox.Message, to []string, change func(pgx.Tx) error) (outbox.MessageID, error) {
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return outbox.MessageID{}, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // a no-op once committed
	if change != nil {
		if err := change(tx); err != nil {
			return outbox.MessageID{}, err
		}
	}
	msg.MessageID = outbox.NewMessageID()
	msg.Headers = map[string]any{headerCommittedAt: time.Now().UnixMicro()}
	d.ledger.enqueued(msg.MessageID, to)
	if _, err := d.writer.Enqueue(ctx, tx, msg); err != nil || !commit {
		d.ledger.ended(msg.MessageID, false)
		return msg.MessageID, err // the deferred Rollback rolls back
	}
	if err := tx.Commit(ctx); err != nil {
		// Whether it committed is unknown: the event stays in the ledger
		// as neither, and the demo stops with this error.
		return outbox.MessageID{}, fmt.Errorf("commit: %w", err)
	}
	d.ledger.ended(msg.MessageID, true)
	return msg.MessageID, nil
}
