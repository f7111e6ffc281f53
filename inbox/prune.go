package inbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/schema"
)

// PruneBatchDefault is Prune's batch size when it is given 0.
const PruneBatchDefault = 1000

// pruneStatementTimeout bounds each batch's delete.
const pruneStatementTimeout = 30 * time.Second

// Pruner is what Prune needs: a handle whose Exec and QueryRow outside a
// transaction each commit on their own. *pgxpool.Pool and *pgx.Conn
// satisfy it; a pgx.Tx would make every batch one transaction again.
type Pruner interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// PruneOption changes what Prune does.
type PruneOption func(*pruneOptions)

type pruneOptions struct{ metrics *Metrics }

// WithMetrics counts the deleted rows in m's inbox_pruned_rows_total.
func WithMetrics(m *Metrics) PruneOption { return func(o *pruneOptions) { o.metrics = m } }

// Prune deletes the claims of table t (a zero Table means DefaultTable)
// received more than olderThan ago, by the database's clock, and returns
// how many it deleted. It deletes at most batch rows per statement (0
// means PruneBatchDefault), each batch its own transaction, so that it
// never holds many row locks or one long transaction, and consumers keep
// claiming meanwhile; it stops when a batch comes back short, or ctx ends.
// The cut-off is fixed when it starts.
//
// olderThan must be longer than any message can take to be redelivered
// (the longest a consumer may be down, plus the broker's and the relay's
// retries): a duplicate arriving after its claim was pruned is processed
// again. Batches skip rows that another Prune holds, so two may run at
// once.
func Prune(ctx context.Context, db Pruner, t schema.Table, olderThan time.Duration, batch int, opts ...PruneOption) (int64, error) {
	if t.Name == "" {
		t = DefaultTable
	}
	var o pruneOptions
	for _, opt := range opts {
		opt(&o)
	}
	if olderThan <= 0 {
		return 0, fmt.Errorf("inbox: prune %s: older-than %s: want a positive duration", t, olderThan)
	}
	if batch < 0 {
		return 0, fmt.Errorf("inbox: prune %s: batch %d: want a positive size", t, batch)
	}
	if batch == 0 {
		batch = PruneBatchDefault
	}
	var cutoff time.Time
	if err := db.QueryRow(ctx, "select now() - $1::bigint * interval '1 microsecond'", olderThan.Microseconds()).Scan(&cutoff); err != nil {
		return 0, fmt.Errorf("inbox: prune %s: read the clock: %w", t, err)
	}
	// By primary key, the oldest first through the received_at index.
	del := `delete from ` + t.Ident() + ` where (consumer, message_id) in (
	select consumer, message_id from ` + t.Ident() + ` where received_at < $1
	order by received_at limit $2 for update skip locked)`
	var total int64
	for {
		n, err := pruneBatch(ctx, db, del, cutoff, batch)
		total += n
		o.metrics.prunedRows(n)
		if err != nil {
			return total, fmt.Errorf("inbox: prune %s: %w", t, err)
		}
		if n < int64(batch) {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("inbox: prune %s: %w", t, err)
		}
	}
}

func pruneBatch(ctx context.Context, db Pruner, del string, cutoff time.Time, batch int) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, pruneStatementTimeout)
	defer cancel()
	tag, err := db.Exec(ctx, del, cutoff, batch)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}
