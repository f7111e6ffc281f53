package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"math"
	"slices"
	"testing"
)

// insertSized inserts one row per size, with random (incompressible)
// payloads and routing keys "r.001" …, and returns the payloads.
func (b *storeBundle) insertSized(t *testing.T, sizes ...int) [][]byte {
	t.Helper()
	payloads := make([][]byte, len(sizes))
	for i, n := range sizes {
		payloads[i] = make([]byte, n)
		_, _ = rand.Read(payloads[i])
		b.env.Exec(t, `insert into {{t}} (routing_key, payload) values ($1, $2)`, fmt.Sprintf("r.%03d", i+1), payloads[i])
	}
	return payloads
}

// loadedKeys returns the routing keys of the loaded and deferred rows of c,
// checking that the loaded rows carry their payloads and the deferred none.
func loadedKeys(t *testing.T, c *claim, payloads [][]byte) (loaded, deferred []string) {
	t.Helper()
	for _, r := range c.rows {
		var i int
		if _, err := fmt.Sscanf(r.RoutingKey, "r.%03d", &i); err != nil {
			t.Fatal(err)
		}
		switch {
		case r.deferred && r.Payload != nil:
			t.Errorf("deferred row %s came with a payload", r.RoutingKey)
		case !r.deferred && !bytes.Equal(r.Payload, payloads[i-1]):
			t.Errorf("row %s: payload of %d bytes, want its %d bytes", r.RoutingKey, len(r.Payload), len(payloads[i-1]))
		}
		if r.deferred {
			deferred = append(deferred, r.RoutingKey)
		} else {
			loaded = append(loaded, r.RoutingKey)
		}
	}
	if c.loaded != len(loaded) {
		t.Errorf("claim counts %d loaded rows, has %d", c.loaded, len(loaded))
	}
	return loaded, deferred
}

// settleLoaded settles c with its loaded rows acked and its deferred rows
// not sent, claims up to next rows after it and returns that claim.
func (b *storeBundle) settleLoaded(t *testing.T, c *claim, next int) *claim {
	t.Helper()
	var res []Result
	for i := range c.rows {
		if !c.rows[i].deferred {
			res = append(res, Result{Row: &c.rows[i], Outcome: Acked})
		}
	}
	st, nc, settleErr, claimErr := b.store.Settle(context.Background(), c, res, next)
	if settleErr != nil || claimErr != nil {
		t.Fatalf("settle: %v; claim: %v", settleErr, claimErr)
	}
	if st.deleted != c.loaded {
		t.Fatalf("settle deleted %d rows, want %d", st.deleted, c.loaded)
	}
	t.Cleanup(func() { b.store.Settle(context.Background(), nc, nil, 0) })
	return nc
}

// A claim returns the payloads of the longest prefix of its rows within
// the byte bound, and the rest locked but deferred, without payload, even
// those small enough to fit: they must not overtake the row that did not.
// Once the claim is settled, the next one takes the deferred rows first.
func TestClaimLoadsPayloadsWithinBudget(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	b.store.maxBytes = 6000
	payloads := b.insertSized(t, 1000, 3000, 2000, 5000, 100, 800)

	c, _ := b.claimKeys(t, 10)
	loaded, deferred := loadedKeys(t, c, payloads)
	if want := keys(1, 3); !slices.Equal(loaded, want) {
		t.Errorf("loaded %v, want %v", loaded, want)
	}
	if want := keys(4, 6); !slices.Equal(deferred, want) {
		t.Errorf("deferred %v, want %v", deferred, want)
	}
	if !c.full {
		t.Error("a claim that deferred rows must say that more rows wait")
	}
	if _, got := b.claimKeys(t, 10); len(got) != 0 {
		t.Errorf("a second claim took %v: the deferred rows must stay locked", got)
	}

	// Settled with nothing sent, every row stays. The estimate, 1983
	// bytes a row, asks for 3 rows: they fit. The next claim takes the
	// rows deferred at first, and loads them now that they come first.
	_, _, settleErr, claimErr := b.store.Settle(context.Background(), c, nil, 0)
	if settleErr != nil || claimErr != nil {
		t.Fatal(settleErr, claimErr)
	}
	c, _ = b.claimKeys(t, 10)
	loaded, deferred = loadedKeys(t, c, payloads)
	if want := keys(1, 3); !slices.Equal(loaded, want) || len(deferred) != 0 || !c.full {
		t.Errorf("claim after the estimate: loaded %v, deferred %v, full %t; want %v, none, full", loaded, deferred, c.full, want)
	}
	nc := b.settleLoaded(t, c, 10)
	loaded, deferred = loadedKeys(t, nc, payloads)
	if want := keys(4, 6); !slices.Equal(loaded, want) || len(deferred) != 0 {
		t.Errorf("claim after the settle: loaded %v, deferred %v; want %v", loaded, deferred, want)
	}
}

// A row larger than the bound is loaded when it comes first, alone.
func TestClaimLoadsALargeRowAlone(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	b.store.maxBytes = 4000
	payloads := b.insertSized(t, 10_000, 10, 10)

	c, _ := b.claimKeys(t, 10)
	loaded, deferred := loadedKeys(t, c, payloads)
	if !slices.Equal(loaded, keys(1, 1)) || !slices.Equal(deferred, keys(2, 3)) {
		t.Errorf("loaded %v, deferred %v; want [r.001], [r.002 r.003]", loaded, deferred)
	}
	// The estimate, 3340 bytes a row, asks for one row.
	nc := b.settleLoaded(t, c, 10)
	loaded, deferred = loadedKeys(t, nc, payloads)
	if !slices.Equal(loaded, keys(2, 2)) || len(deferred) != 0 {
		t.Errorf("next claim loaded %v, deferred %v; want [r.002]", loaded, deferred)
	}
}

// A row larger than any message may be is never loaded, first or not: it
// comes back with its size only, and the rows after it are deferred.
func TestClaimNeverLoadsARowOverMaxMessageSize(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	b.store.maxBytes, b.store.maxRowBytes = 4000, 5000
	payloads := b.insertSized(t, 6000, 10, 10)

	c, _ := b.claimKeys(t, 10)
	if loaded, deferred := loadedKeys(t, c, payloads); len(loaded) != 0 || !slices.Equal(deferred, keys(1, 3)) {
		t.Errorf("loaded %v, deferred %v; want none, %v", loaded, deferred, keys(1, 3))
	}
	for i, r := range c.rows {
		if r.size != len(payloads[i]) {
			t.Errorf("row %s: size %d, want %d", r.RoutingKey, r.size, len(payloads[i]))
		}
	}
}

// The payloads past the bound are not read at all. The claim runs under
// EXPLAIN (ANALYZE, BUFFERS) inside a query that reads every payload it
// returns, as sending them to the client does: the pages it touches follow
// the rows it loads, not the rows it locks.
func TestClaimReadsOnlyPayloadsWithinBudget(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	const rowSize, rows = 1 << 20, 8
	sizes := make([]int, rows)
	for i := range sizes {
		sizes[i] = rowSize
	}
	b.insertSized(t, sizes...)
	pages := func(budget int64) int {
		t.Helper()
		ctx := context.Background()
		tx, err := b.env.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		_, n, err := ExplainTotals(ctx, tx, "select count(*), max(get_byte(payload, 0)) from ("+
			b.store.claimSQL+") c", b.store.claimArgs(rows, budget, math.MaxInt64)...)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	all, two := pages(math.MaxInt64), pages(2*rowSize)
	t.Logf("pages touched: %d loading %d rows, %d loading 2", all, rows, two)
	if perRow := all / rows; two > 3*perRow {
		t.Errorf("a claim loading 2 of %d rows touched %d pages; loading all of them touched %d", rows, two, all)
	}
}

// A claim asks for as many rows as the recent rows' size lets fit in the
// bound, so that large rows do not make it lock a whole batch to send a few.
func TestClaimAsksForRowsThatFit(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	b.store.maxBytes = 10_000
	sizes := make([]int, 30)
	for i := range sizes {
		sizes[i] = 2_000
	}
	payloads := b.insertSized(t, sizes...)

	c, _ := b.claimKeys(t, 20) // no estimate yet: 20 rows, 5 loaded
	if loaded, deferred := loadedKeys(t, c, payloads); len(loaded) != 5 || len(deferred) != 15 {
		t.Fatalf("first claim: %d loaded, %d deferred; want 5 and 15", len(loaded), len(deferred))
	}
	nc := b.settleLoaded(t, c, 20) // 5 rows deleted; now 5 rows are asked for
	loaded, deferred := loadedKeys(t, nc, payloads)
	if !slices.Equal(loaded, keys(6, 10)) || len(deferred) != 0 || !nc.full {
		t.Errorf("second claim: loaded %v, deferred %v, full %t; want %v, none, full", loaded, deferred, nc.full, keys(6, 10))
	}
	if got := b.store.rowLimit(500); got != 5 {
		t.Errorf("rowLimit(500) = %d, want 5", got)
	}
}
