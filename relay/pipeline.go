package relay

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// drain claims, publishes and settles batches back to back until a claim
// comes back short of a full batch or stop is done, and returns how many
// rows it claimed. ctx bounds the work itself (see Run: it outlives stop by
// the shutdown timeout).
//
// It keeps two batches on the wire, so the broker always has the next one
// while it confirms the last, and overlaps the database work with it: while
// batch k is awaited, batch k+1 is in flight and a second goroutine settles
// batch k-1 and then claims k+2. Rows of batches in flight are locked, so a
// claim skips them. Order per partition_key:
//
//   - batch k+2 is claimed after batch k-1 is settled, so the claim sees the
//     back-off of a row of k-1 that failed and skips the later rows of its
//     key (the claim query does);
//   - batch k+2 is sent after batch k is awaited and after k+1 was sent, so
//     rows of a key that failed in k, or failed before being sent in k+1,
//     are held back (see amqpPublisher.Send);
//   - a row of k+1 that the broker refuses after it was sent (nack, return)
//     can be followed by a later row of its key in k+2 that succeeds: that
//     is an order break, counted in outbox_order_breaks_total.
func (l *loop) drain(stop, ctx context.Context) (int, error) {
	c, err := l.claim(ctx)
	if err != nil || len(c.rows) == 0 {
		return 0, err
	}
	wd := l.pub.watch(ctx)
	defer wd.stop()

	type sentBatch struct {
		c       *claim
		f       *inflight
		results []Result
	}
	var (
		total     int
		queue     []*sentBatch // sent, not yet awaited, oldest first
		done      *sentBatch   // awaited, not yet settled
		errs      []error
		lastFull  bool
		broken    bool
		claimNext = func() bool { return lastFull && !broken && stop.Err() == nil }
	)
	send := func(c *claim) {
		var held map[string]bool
		if done != nil {
			held = failedKeys(done.results)
		} else {
			held = map[string]bool{}
		}
		for _, s := range queue {
			s.f.heldKeys(held)
		}
		f := l.pub.Send(ctx, c.rows, held, wd)
		queue = append(queue, &sentBatch{c: c, f: f})
		total += len(c.rows)
		lastFull = len(c.rows) == l.cfg.BatchSize
		broken = broken || f.err != nil
	}

	send(c)
	var next *claim
	if claimNext() {
		if next, err = l.claim(ctx); err != nil {
			errs = append(errs, err)
			broken = true
		}
	}
	for len(queue) > 0 {
		if next != nil && len(next.rows) > 0 && !broken {
			send(next)
			next = nil
		}
		oldest := queue[0]
		queue = queue[1:]
		toSettle, doClaim := done, claimNext()
		var bgNext *claim
		var bgErr error
		bg := make(chan struct{})
		go func() {
			defer close(bg)
			if toSettle != nil {
				bgErr = l.settle(ctx, toSettle.c, toSettle.results)
			}
			if doClaim && bgErr == nil {
				bgNext, bgErr = l.claim(ctx)
			}
		}()
		var pubErr error
		oldest.results, pubErr = l.pub.Await(oldest.f)
		<-bg
		if done != nil {
			l.countOrderBreaks(done.results, oldest.results)
		}
		done = oldest
		if next != nil { // claimed but not sent: the connection broke
			l.store.Release(ctx, next)
		}
		next = bgNext
		if pubErr != nil || bgErr != nil {
			errs = append(errs, pubErr, bgErr)
			broken = true
		}
	}
	if next != nil {
		l.store.Release(ctx, next)
	}
	if err := l.settle(ctx, done.c, done.results); err != nil {
		errs = append(errs, err)
	}
	return total, errors.Join(errs...)
}

// countOrderBreaks counts the rows of a batch that the broker confirmed
// while a row of their key in the batch before failed after it was sent:
// consumers see them before that row's retry.
func (l *loop) countOrderBreaks(prev, cur []Result) {
	failed := failedKeys(prev)
	for _, r := range cur {
		if r.Outcome == Acked && r.Row.PartitionKey != nil && failed[*r.Row.PartitionKey] {
			l.metrics.orderBreaks.Inc()
		}
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
	l.vac.rowsDeleted(st.deleted)
	l.observe(results, st)
	return nil
}

// failedKeys returns the partition keys of rows of an awaited batch that
// failed or were held back: later rows of those keys wait for the retry.
func failedKeys(results []Result) map[string]bool {
	keys := map[string]bool{}
	for _, r := range results {
		if r.Outcome != Acked && r.Row.PartitionKey != nil {
			keys[*r.Row.PartitionKey] = true
		}
	}
	return keys
}
