package relay

import (
	"errors"
	"slices"
	"testing"
)

// orderBatch is one batch of a drain as the order test scripts it: its
// rows, those the publisher's check refuses before sending, and those the
// broker nacks after they were sent.
type orderBatch struct {
	rows   []Row
	refuse []int64
	nack   []int64
}

// The per-key order rule (order.go), over the batches of one drain: each
// batch is planned with the batch before it still on the wire, then the
// oldest is awaited, as drain does.
func TestLoopKeyOrder(t *testing.T) {
	t.Parallel()
	deferred := func(r []Row, i int) []Row { r[i].deferred = true; return r }
	for _, tc := range []struct {
		name      string
		batches   []orderBatch
		sent      []string // ids sent, per batch
		held      []string // ids held back, per batch
		breaks    int      // order breaks counted
		holdsBack []bool   // per batch, while on the wire
	}{{
		name:    "no keys: everything goes, whatever fails",
		batches: []orderBatch{{rows: rows("1", "2", "3"), refuse: []int64{1}, nack: []int64{2}}, {rows: rows("4")}},
		sent:    []string{"[2 3]", "[4]"},
		held:    []string{"[]", "[]"},
	}, {
		name:    "a row refused before sending holds back the rest of its key in its batch",
		batches: []orderBatch{{rows: rows("1a", "2b", "3a", "4a"), refuse: []int64{1}}},
		sent:    []string{"[2]"},
		held:    []string{"[3 4]"},
	}, {
		name:      "and in the batch sent while it is on the wire",
		batches:   []orderBatch{{rows: rows("1a", "2b"), refuse: []int64{1}}, {rows: rows("3a", "4b")}},
		sent:      []string{"[2]", "[4]"},
		held:      []string{"[]", "[3]"},
		holdsBack: []bool{false, true},
	}, {
		name: "a row nacked after sending holds back its key in the batch planned after it is awaited",
		batches: []orderBatch{{rows: rows("1a"), nack: []int64{1}}, {rows: rows("2b")},
			{rows: rows("3a", "4b")}},
		sent: []string{"[1]", "[2]", "[4]"},
		held: []string{"[]", "[]", "[3]"},
	}, {
		name:    "a later row of its key already on the wire is an order break",
		batches: []orderBatch{{rows: rows("1a"), nack: []int64{1}}, {rows: rows("2a", "3b")}},
		sent:    []string{"[1]", "[2 3]"},
		held:    []string{"[]", "[]"},
		breaks:  1,
	}, {
		name:    "so is one later in the same batch",
		batches: []orderBatch{{rows: rows("1a", "2a", "3a"), nack: []int64{1}}},
		sent:    []string{"[1 2 3]"},
		held:    []string{"[]"},
		breaks:  2,
	}, {
		name:      "a deferred row holds back the rest of its key, and no later claim",
		batches:   []orderBatch{{rows: deferred(rows("1a", "2b", "3b"), 1)}},
		sent:      []string{"[1]"},
		held:      []string{"[2 3]"},
		holdsBack: []bool{true},
	}, {
		name:      "a deferred row alone holds back no claim",
		batches:   []orderBatch{{rows: deferred(rows("1a", "2b"), 1)}},
		sent:      []string{"[1]"},
		held:      []string{"[2]"},
		holdsBack: []bool{false},
	}, {
		name: "held rows do not hold their key in the next batch",
		batches: []orderBatch{{rows: rows("1a", "2b"), refuse: []int64{1}}, {rows: rows("3a")},
			{rows: rows("4c")}, {rows: rows("5a")}},
		sent: []string{"[2]", "[]", "[4]", "[5]"},
		held: []string{"[]", "[3]", "[]", "[]"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var o keyOrder
			var wire []*batch
			breaks := 0
			await := func() {
				b := wire[0]
				wire = wire[1:]
				nacked := map[int64]bool{}
				for _, b := range tc.batches {
					for _, id := range b.nack {
						nacked[id] = true
					}
				}
				for i := range b.rows {
					if !b.send[i] {
						continue
					}
					b.results[i] = Result{Row: &b.rows[i], Outcome: Acked}
					if nacked[b.rows[i].ID] {
						b.results[i] = failed(&b.rows[i], ReasonNack, errors.New("nacked"))
					}
				}
				breaks += o.awaited(b.results)
			}
			for n, ob := range tc.batches {
				if len(wire) == 2 {
					await()
				}
				b := newBatch(&claim{rows: ob.rows})
				checked := map[int64]bool{}
				o.plan(b, wire, func(i int) bool {
					checked[b.rows[i].ID] = true
					if slices.Contains(ob.refuse, b.rows[i].ID) {
						b.results[i] = failed(&b.rows[i], ReasonInvalid, errors.New("refused"))
						return false
					}
					return true
				})
				var sent, held []Row
				for i, r := range b.rows {
					if b.send[i] {
						sent = append(sent, r)
					}
					if b.results[i].Reason == reasonHeld {
						held = append(held, r)
						if checked[r.ID] && !r.deferred {
							t.Errorf("batch %d: row %d held back behind its key, yet checked", n+1, r.ID)
						}
					}
				}
				if got := ids(sent); got != tc.sent[n] {
					t.Errorf("batch %d: sent %s, want %s", n+1, got, tc.sent[n])
				}
				if got := ids(held); got != tc.held[n] {
					t.Errorf("batch %d: held %s, want %s", n+1, got, tc.held[n])
				}
				if n < len(tc.holdsBack) && holdsBack(b) != tc.holdsBack[n] {
					t.Errorf("batch %d: holdsBack = %t, want %t", n+1, holdsBack(b), tc.holdsBack[n])
				}
				wire = append(wire, b)
			}
			for len(wire) > 0 {
				await()
			}
			if breaks != tc.breaks {
				t.Errorf("order breaks = %d, want %d", breaks, tc.breaks)
			}
		})
	}
}
