package relay

import "time"

// Per-key order, the one home of the rule within a drain.
//
// Rows of a partition_key are published in id order. The claim does its
// part in SQL (keyFree: a row waits while an earlier row of its key is
// delayed or backing off). Here is the rest, for the batches of one drain,
// where up to two batches are on the wire while a third is planned:
//
//   - A row is held back (not sent, not settled: claimed again later) when
//     an earlier row of its key is held or failed: earlier in its own
//     batch, not sent in a batch still on the wire, or failed in the batch
//     awaited last. A row the broker would refuse fails before it is sent,
//     and holds back the rest of its key the same way. A row claimed
//     without its payload (deferred, see claimQuery) is held too, with the
//     rest of its key.
//   - While a batch on the wire holds rows back behind an earlier row of
//     their key, no claim is made (holdsBack): it would pass over them,
//     locked, and take later rows of their keys.
//   - A row that fails after it was sent (nacked, returned, unconfirmed)
//     cannot stop later rows of its key already on the wire. When one of
//     those is confirmed, consumers see it before the failed row's retry:
//     an order break, counted in outbox_order_breaks_total.

// batch is a claimed batch on its way to the broker: its rows, what
// keyOrder decided for each, and what became of each.
type batch struct {
	claim   *claim
	rows    []Row
	results []Result // one per row; NotSent until decided or confirmed
	send    []bool   // rows keyOrder lets go out
	err     error    // why sending stopped early, or could not begin
	sent    any      // the publisher's record of what it sent, for Await
	// sendBy is when the claim passes the claim age bound: no row of it is
	// sent after that (see sendInTime).
	sendBy time.Time
}

func newBatch(c *claim) *batch {
	b := &batch{claim: c, rows: c.rows, results: make([]Result, len(c.rows)), send: make([]bool, len(c.rows))}
	for i := range b.rows {
		b.results[i] = Result{Row: &b.rows[i], Outcome: NotSent, Reason: ReasonChannelClosed}
	}
	return b
}

// keyOrder applies the rule to the batches of one drain.
type keyOrder struct {
	// broken holds the keys of rows of the batch awaited last that failed
	// or were not sent (held rows aside): later rows of those keys wait for
	// their retry, and one confirmed meanwhile is an order break.
	broken map[string]bool
}

// plan decides which rows of b go out, given the batches still on the wire
// (sent before b, not yet awaited). check asks the publisher whether a row
// can be sent at all (see publisher.Check); it is asked only for rows not
// held back, and fails those it refuses.
func (o *keyOrder) plan(b *batch, wire []*batch, check func(i int) bool) {
	hold := make(map[string]bool, len(o.broken))
	for k := range o.broken {
		hold[k] = true
	}
	for _, w := range wire {
		for i := range w.rows {
			if !w.send[i] || w.results[i].Outcome == Failed {
				addKey(hold, &w.rows[i])
			}
		}
	}
	for i := range b.rows {
		r := &b.rows[i]
		switch {
		case r.PartitionKey != nil && hold[*r.PartitionKey]:
			b.results[i] = Result{Row: r, Outcome: NotSent, Reason: reasonHeld}
		case !check(i):
			addKey(hold, r) // failed before it was sent
		case r.deferred:
			b.results[i] = Result{Row: r, Outcome: NotSent, Reason: reasonHeld}
			addKey(hold, r)
		default:
			b.send[i] = true
		}
	}
}

// awaited takes in the results of the batch awaited next (the oldest on
// the wire) and returns how many of its rows broke their key's order.
func (o *keyOrder) awaited(results []Result) (breaks int) {
	broken := o.broken
	o.broken = map[string]bool{}
	for _, r := range results {
		key := r.Row.PartitionKey
		if key == nil {
			continue
		}
		switch {
		case r.Outcome == Acked:
			if broken[*key] || o.broken[*key] {
				breaks++
			}
		case r.Reason != reasonHeld:
			o.broken[*key] = true
		}
	}
	return breaks
}

// holdsBack reports whether a batch on the wire holds rows back behind an
// earlier row of their key (its deferred rows do not count: they are
// claimed again once it is settled, and hold only their own key).
func holdsBack(b *batch) bool {
	for i, r := range b.results {
		if r.Reason == reasonHeld && !b.rows[i].deferred {
			return true
		}
	}
	return false
}

func addKey(keys map[string]bool, r *Row) {
	if r.PartitionKey != nil {
		keys[*r.PartitionKey] = true
	}
}
