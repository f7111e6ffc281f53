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

// runJob is one job's life: the api submits it, the job service completes
// it (or fails before COMMIT if !commit), and, if wait, the api waits for
// its job.completed event where it used to poll GET /jobs/{id}.
func (d *demo) runJob(ctx context.Context, commit, wait bool) (outbox.MessageID, error) {
	id, err := d.submitJob(ctx)
	if err != nil {
		return outbox.MessageID{}, err
	}
	msgID, err := d.completeJob(ctx, id, commit)
	if err != nil || !commit || !wait {
		return msgID, err
	}
	return msgID, d.await(ctx, fmt.Sprintf("job %d's event", id), msgID)
}

// submitJob is the api's POST /jobs: it inserts a running job. Nothing is
// announced yet.
func (d *demo) submitJob(ctx context.Context) (int64, error) {
	var id int64
	err := d.pool.QueryRow(ctx, "insert into "+d.jobsTable+" (state) values ('running') returning id").Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("submit job: %w", err)
	}
	d.say("api", "POST /jobs -> job %d; waiting for its job.completed event instead of polling GET /jobs/%d", id, id)
	return id, nil
}

// completeJob is the job service finishing job id: it updates the job's row
// and enqueues job.completed, for the api and every web instance, in ONE
// transaction. It commits, or rolls back if !commit (as a crash before
// COMMIT would): both changes happen, or neither does.
func (d *demo) completeJob(ctx context.Context, id int64, commit bool) (outbox.MessageID, error) {
	ev := jobEvent{JobID: id, Result: 1 + rand.IntN(100)}
	body, _ := json.Marshal(ev) // cannot fail
	msg := outbox.Message{
		Exchange:     d.jobsExchange,
		RoutingKey:   "job.completed",
		PartitionKey: "job-" + strconv.FormatInt(id, 10), // a job's events stay in order
		ContentType:  "application/json",
		Payload:      body,
	}
	ids, err := d.transact(ctx, commit, []outbox.Message{msg}, append([]string{"api"}, webInstances...), func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "update "+d.jobsTable+" set state = 'completed', result = $2 where id = $1", id, ev.Result)
		return err
	})
	switch {
	case err != nil:
		return outbox.MessageID{}, fmt.Errorf("complete job %d: %w", id, err)
	case commit:
		d.say("jobs", "job %d completed: row updated and job.completed enqueued in one transaction, committed", id)
	default:
		d.say("jobs", "job %d failed before COMMIT: its update and its job.completed rolled back together; no event will come", id)
	}
	return ids[0], nil
}

// burst commits n job.progress events in one transaction, as a bulk import
// would; only the web instances bind job.progress.
func (d *demo) burst(ctx context.Context, n int) ([]outbox.MessageID, error) {
	msgs := make([]outbox.Message, n)
	for i := range msgs {
		msgs[i] = outbox.Message{Exchange: d.jobsExchange, RoutingKey: "job.progress", Payload: fmt.Appendf(nil, `{"seq":%d}`, i)}
	}
	ids, err := d.transact(ctx, true, msgs, webInstances, nil)
	if err != nil {
		return nil, fmt.Errorf("burst: %w", err)
	}
	d.say("jobs", "%d job.progress events committed in one transaction", n)
	return ids, nil
}

// transact runs change (if any) and enqueues msgs, for consumers to, in
// one transaction, then commits, or rolls back if !commit. Each message
// gets its id and the commit-time header here, and enters the ledger
// before the transaction ends.
func (d *demo) transact(ctx context.Context, commit bool, msgs []outbox.Message, to []string, change func(pgx.Tx) error) ([]outbox.MessageID, error) {
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // a no-op once committed
	if change != nil {
		if err := change(tx); err != nil {
			return nil, err
		}
	}
	ids := make([]outbox.MessageID, len(msgs))
	at := time.Now().UnixMicro()
	for i := range msgs {
		ids[i] = outbox.NewMessageID()
		msgs[i].MessageID = ids[i]
		msgs[i].Headers = map[string]any{headerCommittedAt: at}
	}
	d.ledger.enqueued(ids, to)
	if _, err := d.writer.Enqueue(ctx, tx, msgs...); err != nil {
		d.ledger.ended(ids, false)
		return nil, err
	}
	if !commit {
		d.ledger.ended(ids, false)
		return ids, tx.Rollback(ctx)
	}
	if err := tx.Commit(ctx); err != nil {
		// Whether it committed is unknown: the events stay in the ledger
		// as neither, and the demo stops with this error.
		return nil, fmt.Errorf("commit: %w", err)
	}
	d.ledger.ended(ids, true)
	return ids, nil
}
