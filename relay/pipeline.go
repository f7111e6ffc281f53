package relay

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// drain claims, publishes and settles batches back to back until a claim
// comes back short of a full batch or stop is done, and returns how many
// rows it claimed. ctx bounds the work itself (see Run: it outlives stop
// by the shutdown timeout).
//
// The database work of one batch overlaps the broker work of the next:
// while the broker confirms batch k, a second goroutine settles batch k-1
// and then claims batch k+1. Claiming after that settle has committed means
// the claim sees the back-off of any row of k-1 that failed; rows of k are
// still locked and skipped. Batch k+1 is sent only once k is confirmed, so
// one batch at a time is on the wire, and rows of a key that failed in k
// are held back in k+1 (see amqpPublisher.Send).
func (l *loop) drain(stop, ctx context.Context) (int, error) {
	cur, err := l.claim(ctx)
	if err != nil || len(cur.rows) == 0 {
		return 0, err
	}
	total := 0
	var held map[string]bool
	var prev *claim
	var prevResults []Result
	for {
		total += len(cur.rows)
		f := l.pub.Send(ctx, cur.rows, held)
		more := len(cur.rows) == l.cfg.BatchSize && f.err == nil && stop.Err() == nil

		var next *claim
		var bgErr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			if prev != nil {
				bgErr = l.settle(ctx, prev, prevResults)
			}
			if more && bgErr == nil {
				next, bgErr = l.claim(ctx)
			}
		}()
		results, pubErr := l.pub.Await(f)
		<-done

		if pubErr != nil || bgErr != nil || next == nil || len(next.rows) == 0 || stop.Err() != nil {
			// Settle what was sent; give back what was claimed ahead.
			err := l.settle(ctx, cur, results)
			if next != nil {
				l.store.Release(ctx, next)
			}
			return total, errors.Join(pubErr, bgErr, err)
		}
		prev, prevResults = cur, results
		held = failedKeys(results)
		cur = next
	}
}

// claim claims a batch, within dbTimeout.
func (l *loop) claim(ctx context.Context) (*claim, error) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	l.lastClaim = time.Now()
	c, err := l.store.Claim(ctx, l.cfg.BatchSize)
	if err == nil && len(c.rows) > 0 {
		l.metrics.batchSize.Observe(float64(len(c.rows)))
	}
	return c, err
}

// settle settles a batch within dbTimeout, and records it in metrics and
// logs.
func (l *loop) settle(ctx context.Context, c *claim, results []Result) error {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	st, err := l.store.Settle(ctx, c, results)
	if err != nil {
		return fmt.Errorf("settle %d rows: %w", len(results), err)
	}
	l.observe(results, st)
	return nil
}

// failedKeys returns the partition keys of rows that failed or were held
// back in a batch: later rows of those keys wait for the retry.
func failedKeys(results []Result) map[string]bool {
	var keys map[string]bool
	for _, r := range results {
		if r.Outcome != Acked && r.Row.PartitionKey != nil {
			if keys == nil {
				keys = map[string]bool{}
			}
			keys[*r.Row.PartitionKey] = true
		}
	}
	return keys
}
