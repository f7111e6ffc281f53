package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Handler does a message's work in tx, the transaction that claimed it. It
// may write outbox rows in tx (outbox.Enqueue), so that what it publishes
// commits with its work. An error rolls everything back, the claim too.
// It must not commit or roll back tx itself.
type Handler func(ctx context.Context, tx pgx.Tx) error

// TxBeginner starts the consumer's transactions: *pgxpool.Pool and
// *pgx.Conn satisfy it.
type TxBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Defaults of Config.
const (
	// MaxFailuresDefault is how many times a message's handler may fail
	// before the delivery is rejected without requeue (dead-lettered).
	MaxFailuresDefault = 5
	// RetriesDefault is how many times a transaction that failed with a
	// serialization failure or a deadlock is tried in all.
	RetriesDefault = 10
)

// Config configures a Consumer. The zero value of a field means its default.
type Config struct {
	// Name is the consumer's name, the inbox's consumer column: every
	// replica of one service uses the same name, so that together they
	// handle each message once; two services that both need every message
	// use two names. Required.
	Name string
	// Inbox is the inbox table to claim in. Defaults to New(DefaultTable).
	Inbox *Inbox
	// TxOptions are the options of the transaction the handler runs in
	// (isolation level, ...). Defaults to the server's default, usually
	// READ COMMITTED.
	TxOptions pgx.TxOptions
	// MaxFailures is how many handler failures of one message_id, counted
	// by this Consumer, reject its delivery without requeue, so that the
	// broker dead-letters it (or drops it, if its queue has no
	// dead-letter exchange). Defaults to MaxFailuresDefault.
	MaxFailures int
	// Retries bounds the tries of a transaction that fails with SQLSTATE
	// 40001 (serialization failure, e.g. two claims of one id under
	// REPEATABLE READ) or 40P01 (deadlock). Such failures are retried at
	// once, with a short jittered pause, and are not handler failures.
	// Defaults to RetriesDefault.
	Retries int
	// Metrics, if not nil, counts claims, duplicates, failures and
	// dead-lettered deliveries under the label consumer=Name.
	Metrics *Metrics
}

// Consumer runs handlers effectively once per message_id: it claims the
// delivery's message_id in the handler's transaction, and acknowledges
// only after that transaction committed. It starts no goroutine; Handle is
// safe for concurrent use.
type Consumer struct {
	db       TxBeginner
	cfg      Config
	failures *failureCounts
}

// NewConsumer returns a Consumer running its transactions on db.
func NewConsumer(db TxBeginner, cfg Config) (*Consumer, error) {
	if db == nil {
		return nil, errors.New("inbox: consumer: no database")
	}
	if cfg.Name == "" {
		return nil, errors.New("inbox: consumer: Config.Name is empty")
	}
	if cfg.MaxFailures < 0 || cfg.Retries < 0 {
		return nil, fmt.Errorf("inbox: consumer %q: MaxFailures %d and Retries %d must not be negative", cfg.Name, cfg.MaxFailures, cfg.Retries)
	}
	cfg.Inbox = cmp.Or(cfg.Inbox, defaultInbox)
	cfg.MaxFailures = cmp.Or(cfg.MaxFailures, MaxFailuresDefault)
	cfg.Retries = cmp.Or(cfg.Retries, RetriesDefault)
	return &Consumer{db: db, cfg: cfg, failures: newFailureCounts(failureMemory)}, nil
}

// Outcome is what Handle did with a delivery.
type Outcome int

// The outcomes of Handle.
const (
	Processed    Outcome = iota + 1 // the handler ran and committed; acked
	Duplicate                       // claimed before; acked, handler not run
	Requeued                        // the handler failed; nacked with requeue
	DeadLettered                    // rejected without requeue: bad message_id or too many failures
)

func (o Outcome) String() string {
	switch o {
	case Processed:
		return "processed"
	case Duplicate:
		return "duplicate"
	case Requeued:
		return "requeued"
	case DeadLettered:
		return "dead-lettered"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Handle processes one delivery, which must come from a consumer without
// auto-ack. It begins a transaction, claims d.MessageId, runs h if this is
// the first claim and commits, then acks. A duplicate is acked without
// running h. If h (or the commit) fails, the transaction rolls back and d
// is nacked with requeue, to be redelivered; after Config.MaxFailures
// failures of its message_id it is rejected without requeue instead. A
// delivery without a message_id, or with one that is not a UUID, is
// rejected without requeue at once, and the error matches ErrMessageID.
//
// A crash between the commit and the ack leaves the message unacked: the
// broker redelivers it, and the redelivery is a duplicate. If ctx ends
// while h runs, d is requeued and the failure is not counted.
//
// The error says what went wrong (the handler's error is wrapped); the
// Outcome says what the broker was told.
func (c *Consumer) Handle(ctx context.Context, d amqp.Delivery, h Handler) (Outcome, error) {
	id, err := parseID(d.MessageId)
	if err != nil {
		c.cfg.Metrics.rejected(c.cfg.Name, reasonMessageID)
		return DeadLettered, errors.Join(fmt.Errorf("consumer %q: %w", c.cfg.Name, err), settle("reject", d.Reject(false)))
	}
	first, err := c.process(ctx, id, h)
	switch {
	case err == nil && first:
		c.failures.forget(id)
		c.cfg.Metrics.claimed(c.cfg.Name)
		return Processed, settle("ack after commit (the redelivery will be a duplicate)", d.Ack(false))
	case err == nil:
		c.cfg.Metrics.duplicate(c.cfg.Name)
		return Duplicate, settle("ack duplicate", d.Ack(false))
	case ctx.Err() != nil:
		return Requeued, errors.Join(fmt.Errorf("inbox: consumer %q: message %s: %w", c.cfg.Name, id, err), settle("nack", d.Nack(false, true)))
	}
	c.cfg.Metrics.failed(c.cfg.Name)
	err = fmt.Errorf("inbox: consumer %q: message %s: %w", c.cfg.Name, id, err)
	if !errors.As(err, new(*handlerError)) {
		// The database failed, not the message: no reason to give up on it.
		return Requeued, errors.Join(err, settle("nack", d.Nack(false, true)))
	}
	if n := c.failures.add(id); n >= c.cfg.MaxFailures {
		c.failures.forget(id)
		c.cfg.Metrics.rejected(c.cfg.Name, reasonFailures)
		err = fmt.Errorf("%w (failure %d of %d: rejected without requeue)", err, n, c.cfg.MaxFailures)
		return DeadLettered, errors.Join(err, settle("reject", d.Reject(false)))
	}
	return Requeued, errors.Join(err, settle("nack", d.Nack(false, true)))
}

// settle wraps the error of an ack, nack or reject.
func settle(op string, err error) error {
	if err != nil {
		return fmt.Errorf("inbox: %s: %w", op, err)
	}
	return nil
}

// process runs the transaction, tried again on serialization failures and
// deadlocks, which say nothing about the message.
func (c *Consumer) process(ctx context.Context, id string, h Handler) (bool, error) {
	for try := 1; ; try++ {
		first, err := c.once(ctx, id, h)
		if err == nil || !retryable(err) || try >= c.cfg.Retries {
			return first, err
		}
		pause := time.Duration(try) * time.Millisecond
		pause += rand.N(pause) // jitter: the two transactions should not meet again
		select {
		case <-ctx.Done():
			return false, errors.Join(err, ctx.Err())
		case <-time.After(pause):
		}
	}
}

// once is one try: begin, claim, handle, commit.
func (c *Consumer) once(ctx context.Context, id string, h Handler) (bool, error) {
	tx, err := c.db.BeginTx(ctx, c.cfg.TxOptions)
	if err != nil {
		return false, fmt.Errorf("begin: %w", err)
	}
	// After a commit this is a no-op. Not ctx: a cancelled ctx must still
	// end the transaction on a pooled connection.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	first, err := c.cfg.Inbox.Claim(ctx, tx, c.cfg.Name, id)
	if err != nil || !first {
		return false, err // a duplicate: nothing to commit
	}
	if err := h(ctx, tx); err != nil {
		if tx.Conn().IsClosed() {
			return false, fmt.Errorf("handler (its connection is lost): %w", err)
		}
		return false, &handlerError{err: err}
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("commit: %w", err)
	}
	return true, nil
}

// handlerError is the error of a handler whose connection is still
// alive: the message's fault, as far as the Consumer can tell, and counted
// towards Config.MaxFailures.
type handlerError struct{ err error }

func (e *handlerError) Error() string { return "handler: " + e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

// SQLSTATEs after which the whole transaction is worth another try.
const (
	sqlstateSerializationFailure = "40001"
	sqlstateDeadlockDetected     = "40P01"
)

func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == sqlstateSerializationFailure || pe.Code == sqlstateDeadlockDetected)
}
