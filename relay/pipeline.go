package relay

import (
	"context"
	"errors"
	"fmt"
)

// drain claims, publishes and settles batches back to back until a claim
// comes back short of a full batch, stop is done or a look at the group
// is due (share.go: the batches are settled first), and returns how many
// rows it claimed and loaded, and whether more wait: its last claim was
// full, and it stopped for the look or for stop. ctx bounds the work itself
// (see Run: it outlives stop by the shutdown timeout).
//
// It keeps two batches on the wire, so that the broker always has one to
// work on: while batch k+1 is being confirmed, batch k is settled and batch
// k+2 claimed in one round trip on k's connection, then sent. The claim
// passes over the rows of k+1, which are locked. (A second goroutine that
// settled and claimed while the first awaited confirms, with k and k+1 on
// the wire, measured the same and walked over twice the locked rows.)
// Which rows of a batch go out is keyOrder's decision (order.go): batch
// k+2 is planned after batch k is awaited and with k+1 on the wire.
//
// Memory is bounded by bytes. A claim loads the payloads of at most
// BatchBytes (or of its first row alone), and the rows past that bound come
// back deferred: locked, without their payload, held back like rows behind
// a failed one, and claimed again once their batch is settled. A payload
// over MaxMessageSize is never loaded: its row fails unread. A batch drops
// its payloads once sent, so the batches on the wire cost no payload
// memory: the payloads of one batch are alive at a time.
//
// No claim is made while a batch that stays on the wire holds rows back
// (see holdsBack): the claim would pass over them, take later rows of their
// keys and hold those back in turn, and batch after batch a deferred row
// and the rows of its key would keep each other unsent until the drain
// ended. Once that batch is settled, the next claim takes its rows and the
// ones they held back, in id order, with no batch on the wire before them.
func (l *loop) drain(stop, ctx context.Context) (n int, more bool, err error) {
	c, err := l.claim(ctx)
	if err != nil || len(c.rows) == 0 {
		return 0, false, err
	}
	defer l.pub.Watch(ctx)()

	var (
		order    keyOrder
		total    int
		wire     []*batch // sent, not yet awaited, oldest first
		lastFull bool     // the last claim left rows waiting
		broken   bool     // stop claiming: something failed
		errs     []error
	)
	send := func(c *claim) {
		b := newBatch(c)
		if b.err = l.pub.Prepare(ctx, b); b.err == nil {
			order.plan(b, wire, func(i int) bool { return l.pub.Check(b, i) })
			if err := l.sendInTime(ctx, b); err != nil {
				errs, broken = append(errs, err), true
			}
		}
		dropPayloads(c.rows)
		wire = append(wire, b)
		total += c.loaded
		lastFull = c.full
		broken = broken || b.err != nil
	}
	// mayClaim reports whether to claim now, with the batches in wire
	// staying on the wire.
	mayClaim := func() bool {
		if !lastFull || broken || stop.Err() != nil || l.lookDue() {
			return false
		}
		for _, b := range wire {
			if holdsBack(b) {
				return false
			}
		}
		return true
	}
	// fill claims ahead until two batches are on the wire.
	fill := func() {
		for len(wire) < 2 && mayClaim() {
			c, err := l.claim(ctx)
			if err != nil {
				errs, broken = append(errs, err), true
				return
			}
			if len(c.rows) == 0 {
				lastFull = false
				return
			}
			send(c)
		}
	}

	send(c)
	fill()
	for len(wire) > 0 {
		oldest := wire[0]
		wire = wire[1:]
		if err := l.pub.Await(oldest); err != nil {
			errs, broken = append(errs, err), true
		}
		l.metrics.orderBreaks.Add(float64(order.awaited(oldest.results)))
		next := 0
		if mayClaim() {
			next = l.cfg.BatchSize
		}
		c, err := l.settle(ctx, oldest.claim, oldest.results, next)
		if err != nil {
			errs, broken = append(errs, err), true
		}
		switch {
		case c != nil && len(c.rows) > 0:
			send(c)
			fill()
		case c != nil:
			lastFull = false // claimed, and found none
		}
	}
	return total, lastFull && !broken, errors.Join(errs...)
}

// dropPayloads lets go of the payloads of a sent batch. Send has written
// them to the socket before it returns, and settling needs none of them;
// rows not sent are read again when claimed again.
func dropPayloads(rows []Row) {
	for i := range rows {
		rows[i].Payload = nil
	}
}

// claim claims a batch, within dbTimeout.
func (l *loop) claim(ctx context.Context) (*claim, error) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	l.lastClaim = l.clock.Now()
	c, err := l.store.Claim(ctx, l.cfg.BatchSize)
	l.claimed(c)
	return c, err
}

// claimed records the size of a claimed batch: the rows it loaded.
func (l *loop) claimed(c *claim) {
	if c != nil && c.loaded > 0 {
		l.metrics.batchSize.Observe(float64(c.loaded))
	}
	if c != nil {
		now := l.clock.Now()
		if c.snapshot != "" {
			l.lis.Claimed(c.snapshot)
		}
		l.prog.claimed(len(c.rows))
		l.arrivals.add(now, c.loaded)
		if len(c.rows) > 0 && now.Sub(c.rows[0].CreatedAt) > idleRefreshGap {
			l.backlog = true // see wentIdle
		}
	}
}

// settle settles a batch within dbTimeout, records it in metrics and logs,
// and with next > 0 claims the next batch in the same round trip (see
// pgStore.Settle).
func (l *loop) settle(ctx context.Context, c *claim, results []Result, next int) (*claim, error) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	if next > 0 {
		l.lastClaim = l.clock.Now()
	}
	st, nc, settleErr, claimErr := l.store.Settle(ctx, c, results, next)
	if settleErr != nil {
		return nil, fmt.Errorf("settle %d rows: %w", len(results), settleErr)
	}
	l.vac.rowsDeleted(st.deleted)
	l.observe(results, st)
	l.claimed(nc)
	return nc, claimErr
}
