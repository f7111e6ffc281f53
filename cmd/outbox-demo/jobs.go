package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// The jobs service's pace.
const (
	jobInterval   = 700 * time.Millisecond  // a new job this often
	jobRunTime    = 1500 * time.Millisecond // a job runs this long, plus up to as much again
	rollbackEvery = 5                       // every 5th job's transaction rolls back
	txTimeout     = 10 * time.Second
)

// jobs is a fake service that owns a jobs table. Each change to a job and
// the events announcing it are written in one transaction, through the
// outbox library: both commit, or neither does. Its run is its only
// goroutine; nothing else touches its fields.
type jobs struct {
	pool       *pgxpool.Pool
	writer     *outbox.Writer
	names      names
	ledger     *ledger
	out        *printer
	burstEvery time.Duration
	burstSize  int
	events     chan<- lagEvent // told when a burst has committed
	poisonAt   time.Duration   // when to enqueue the poison row (0: never)
	poisoned   chan<- poisonRow

	started     int   // jobs started by this run, rolled back or not
	lastStarted int64 // the last job started and committed
	burstNo     int
	running     []runningJob
}

type runningJob struct {
	id  int64
	due time.Time
}

// run starts and completes jobs, commits a burst every burstEvery (the
// first after half of it), and the poison row at poisonAt, until ctx is
// done. A transaction under way when ctx ends is finished, not cut short.
func (j *jobs) run(ctx context.Context) error {
	tick := time.NewTicker(jobInterval)
	defer tick.Stop()
	burst := time.NewTimer(j.burstEvery / 2)
	defer burst.Stop()
	if j.burstEvery == 0 {
		burst.Stop() // never fires
	}
	poison := time.NewTimer(j.poisonAt)
	defer poison.Stop()
	if j.poisonAt == 0 {
		poison.Stop()
	}
	if err := j.step(ctx); err != nil {
		return err
	}
	for {
		var err error
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			err = j.step(ctx)
		case <-burst.C:
			err = j.burst(ctx)
			burst.Reset(j.burstEvery)
		case <-poison.C:
			err = j.poison(ctx)
		}
		if err != nil {
			return err
		}
	}
}

// step completes the jobs that are due, then starts one.
func (j *jobs) step(ctx context.Context) error {
	now := time.Now()
	for len(j.running) > 0 && !j.running[0].due.After(now) && ctx.Err() == nil {
		if err := j.complete(ctx, j.running[0].id); err != nil {
			return err
		}
		j.running = j.running[1:]
	}
	if ctx.Err() != nil {
		return nil
	}
	return j.start(ctx)
}

// start inserts a running job and its job.started event; every
// rollbackEvery-th time it then rolls the transaction back, as a failure
// after the insert would.
func (j *jobs) start(ctx context.Context) error {
	j.started++
	commit := j.started%rollbackEvery != 0
	var id int64
	err := j.transact(ctx, commit, func(ctx context.Context, tx pgx.Tx) ([]outbox.Message, []kind, error) {
		err := tx.QueryRow(ctx, "insert into "+j.names.jobsTable+" (state) values ('running') returning id").Scan(&id)
		if err != nil {
			return nil, nil, fmt.Errorf("insert job: %w", err)
		}
		return []outbox.Message{jobMessage(j.names.jobs, keyStarted, jobEvent{JobID: id, State: "running"})}, []kind{kindStarted}, nil
	})
	if err != nil {
		return fmt.Errorf("start job: %w", err)
	}
	if !commit {
		j.out.printf("jobs", "job %d rolled back: its event is never sent", id)
		return nil
	}
	j.lastStarted = id
	j.running = append(j.running, runningJob{id: id, due: time.Now().Add(jobRunTime + rand.N(jobRunTime))})
	j.out.printf("jobs", "job %d started", id)
	return nil
}

// complete marks job id completed and enqueues job.completed for the
// services that care, and a copy on the broadcast exchange for every web
// instance: two events, one transaction.
func (j *jobs) complete(ctx context.Context, id int64) error {
	result := 1 + rand.IntN(100)
	err := j.transact(ctx, true, func(ctx context.Context, tx pgx.Tx) ([]outbox.Message, []kind, error) {
		if _, err := tx.Exec(ctx, "update "+j.names.jobsTable+" set state = 'completed', result = $2, updated_at = now() where id = $1",
			id, result); err != nil {
			return nil, nil, fmt.Errorf("update job: %w", err)
		}
		ev := jobEvent{JobID: id, State: "completed", Result: result}
		return []outbox.Message{
			jobMessage(j.names.jobs, keyCompleted, ev),
			jobMessage(j.names.broadcast, keyCompleted, ev),
		}, []kind{kindCompleted, kindBroadcast}, nil
	})
	if err != nil {
		return fmt.Errorf("complete job %d: %w", id, err)
	}
	j.out.printf("jobs", "job %d completed (result=%d)", id, result)
	return nil
}

// burst commits burstSize job.bulk events in one transaction (one INSERT,
// whatever their number), as a bulk import or a re-index would, and tells
// the lag reporter to watch the backlog drain.
func (j *jobs) burst(ctx context.Context) error {
	j.burstNo++
	msgs := make([]outbox.Message, j.burstSize)
	kinds := make([]kind, j.burstSize)
	for i := range msgs {
		body, _ := json.Marshal(bulkEvent{Burst: j.burstNo, Seq: i}) // cannot fail
		msgs[i] = outbox.Message{
			Exchange:    j.names.jobs,
			RoutingKey:  keyBulk,
			ContentType: "application/json",
			Headers:     map[string]any{headerBurst: j.burstNo, headerBurstSize: j.burstSize},
			Payload:     body,
		}
		kinds[i] = kindBulk
	}
	err := j.transact(ctx, true, func(context.Context, pgx.Tx) ([]outbox.Message, []kind, error) {
		return msgs, kinds, nil
	})
	if err != nil {
		return fmt.Errorf("burst %d: %w", j.burstNo, err)
	}
	j.out.printf("jobs", "burst %d: %d job.bulk events committed in one transaction", j.burstNo, j.burstSize)
	notify(j.events, burstCommitted)
	return nil
}

// poison enqueues one audit.job event about the last job started, for an
// audit service whose exchange nobody has declared yet: as if this service
// shipped the event before that service was deployed. The relay cannot
// publish it; after a few attempts it parks the row dead, and the
// poisonWatch takes over.
func (j *jobs) poison(ctx context.Context) error {
	// No partition key: the event needs no order, and it holds no other
	// row back while it fails.
	body, _ := json.Marshal(jobEvent{JobID: j.lastStarted, State: "started"}) // cannot fail
	msg := outbox.Message{
		MessageID: outbox.NewMessageID(), Exchange: j.names.audit, RoutingKey: keyAudit,
		ContentType: "application/json", Payload: body,
	}
	err := j.transact(ctx, true, func(context.Context, pgx.Tx) ([]outbox.Message, []kind, error) {
		return []outbox.Message{msg}, []kind{kindAudit}, nil
	})
	if err != nil {
		return fmt.Errorf("audit event: %w", err)
	}
	j.out.printf("jobs", "job %d: %s event enqueued for exchange %s, which does not exist yet: the relay will retry it, then park it dead",
		j.lastStarted, keyAudit, j.names.audit)
	j.poisoned <- poisonRow{messageID: msg.MessageID, job: j.lastStarted} // it has room for the one row
	return nil
}

// transact runs change in a transaction, enqueues the events it returns in
// the same transaction, then commits, or rolls back if !commit. Each event
// gets its message id here unless it has one, and is in the ledger before
// the transaction ends, so that no delivery can beat it there.
//
// The transaction does not use ctx, only its values: once begun, it ends
// by its own decision, not halfway because production stopped, which
// would leave the ledger unsure whether it committed.
func (j *jobs) transact(ctx context.Context, commit bool, change func(context.Context, pgx.Tx) ([]outbox.Message, []kind, error)) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), txTimeout)
	defer cancel()
	tx, err := j.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // a no-op once committed
	msgs, kinds, err := change(ctx, tx)
	if err != nil {
		return err
	}
	committedAt := time.Now().UnixMicro()
	for i := range msgs {
		if msgs[i].MessageID.IsZero() {
			msgs[i].MessageID = outbox.NewMessageID()
		}
		if msgs[i].Headers == nil {
			msgs[i].Headers = make(map[string]any, 1)
		}
		msgs[i].Headers[headerCommittedAt] = committedAt
	}
	j.ledger.enqueued(msgs, kinds)
	if _, err := j.writer.Enqueue(ctx, tx, msgs...); err != nil {
		j.ledger.ended(msgs, false)
		return err
	}
	if !commit {
		err := tx.Rollback(ctx)
		j.ledger.ended(msgs, false)
		if err != nil {
			return fmt.Errorf("roll back: %w", err)
		}
		return nil
	}
	if err := tx.Commit(ctx); err != nil {
		// If the connection broke during COMMIT, nobody knows whether it
		// happened: the events stay in flight in the ledger, and the demo
		// stops.
		return fmt.Errorf("commit: %w", err)
	}
	j.ledger.ended(msgs, true)
	return nil
}

// jobMessage is an event about a job. Its partition key keeps the events
// of one job in order: a consumer never sees a job complete before it
// started.
func jobMessage(exchange, key string, ev jobEvent) outbox.Message {
	body, _ := json.Marshal(ev) // cannot fail
	return outbox.Message{
		Exchange:     exchange,
		RoutingKey:   key,
		PartitionKey: "job-" + strconv.FormatInt(ev.JobID, 10),
		ContentType:  "application/json",
		Payload:      body,
	}
}
