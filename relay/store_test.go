package relay

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

type storeBundle struct {
	env   *testenv.Env
	store *pgStore
}

func setupStore(t *testing.T) *storeBundle {
	t.Helper()
	e := testenv.New(t)
	return &storeBundle{env: e, store: newStore(e.Pool, e.Table, 10, func(int) time.Duration { return time.Hour })}
}

// claimKeys claims a batch and returns the routing keys of its rows, in
// claim order. The claim is released in t.Cleanup if the test leaves it.
func (b *storeBundle) claimKeys(t *testing.T, limit int) (*claim, []string) {
	t.Helper()
	c, err := b.store.Claim(context.Background(), limit)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	t.Cleanup(func() { b.store.Settle(context.Background(), c, nil, 0) })
	var keys []string
	for _, r := range c.rows {
		keys = append(keys, r.RoutingKey)
	}
	return c, keys
}

// settle settles c with every row acked and with next > 0 claims up to
// next rows after it, returning their routing keys.
func (b *storeBundle) settle(t *testing.T, c *claim, next int) (*claim, []string) {
	t.Helper()
	st, nc, settleErr, claimErr := b.store.Settle(context.Background(), c, acked(c), next)
	if settleErr != nil || claimErr != nil {
		t.Fatalf("settle: %v; claim: %v", settleErr, claimErr)
	}
	if st.deleted != len(c.rows) {
		t.Fatalf("settle deleted %d rows, want %d", st.deleted, len(c.rows))
	}
	if nc == nil {
		return nil, nil
	}
	t.Cleanup(func() { b.store.Settle(context.Background(), nc, nil, 0) })
	var keys []string
	for _, r := range nc.rows {
		keys = append(keys, r.RoutingKey)
	}
	return nc, keys
}

func acked(c *claim) []Result {
	res := make([]Result, len(c.rows))
	for i := range c.rows {
		res[i] = Result{Row: &c.rows[i], Outcome: Acked, AckedAt: time.Now()}
	}
	return res
}

// keys returns "r.001" … for from to to.
func keys(from, to int) []string {
	var k []string
	for i := from; i <= to; i++ {
		k = append(k, fmt.Sprintf("r.%03d", i))
	}
	return k
}

// A claim made while earlier batches are still in flight (their rows locked
// by open transactions) takes the rows behind them. The first version of
// the claim picked its candidates before skipping locked rows, found only
// the in-flight batch and came back empty, so batches never overlapped.
func TestClaimWhileBatchesInFlight(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	b.env.Exec(t, `insert into {{t}} (routing_key, payload)
select 'r.' || lpad(i::text, 3, '0'), 'x' from generate_series(1, 250) i`)

	first, got := b.claimKeys(t, 100)
	if want := keys(1, 100); !slices.Equal(got, want) {
		t.Fatalf("first claim %v, want %v", got, want)
	}
	second, got := b.claimKeys(t, 100)
	if want := keys(101, 200); !slices.Equal(got, want) {
		t.Fatalf("second claim, first in flight: %v, want %v", got, want)
	}
	// The settle of the first batch claims on its connection, the second
	// batch still in flight.
	third, got := b.settle(t, first, 100)
	if want := keys(201, 250); !slices.Equal(got, want) {
		t.Fatalf("claim after settling the first, second in flight: %v, want %v", got, want)
	}
	b.settle(t, second, 0)
	if _, none := b.settle(t, third, 100); len(none) != 0 {
		t.Errorf("claim after settling every row: %v", none)
	}
}

// Rows delayed by their writer or backing off are promoted into the claim
// index once due and taken in id order with the rest. A promoted row the
// claim did not take stays locked with that batch, and later rows of its
// partition_key wait for it rather than overtake it.
func TestClaimPromotesDueRowsInOrder(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	b.env.Exec(t, `insert into {{t}} (routing_key, payload, partition_key, available_at) values
    ('r.001', 'x', null, default),
    ('r.002', 'x', 'k', now() - interval '1 second'),  -- due: promoted
    ('r.003', 'x', 'k', default),
    ('r.004', 'x', 'l', now() + interval '1 hour'),    -- not due: holds l
    ('r.005', 'x', 'l', default),
    ('r.006', 'x', null, default)`)

	first, got := b.claimKeys(t, 10)
	if want := []string{"r.001", "r.002", "r.003", "r.006"}; !slices.Equal(got, want) {
		t.Fatalf("claim %v, want %v", got, want)
	}
	b.settle(t, first, 0)

	// Promoted by a batch too small to take it: r.008 (due) is locked
	// with that batch; r.009 of its key must not go out before it.
	b.env.Exec(t, `insert into {{t}} (routing_key, payload, partition_key, available_at) values
    ('r.007', 'x', null, default),
    ('r.008', 'x', 'm', now() - interval '1 second'),
    ('r.009', 'x', 'm', default),
    ('r.010', 'x', null, default)`)
	small, got := b.claimKeys(t, 1)
	if want := []string{"r.007"}; !slices.Equal(got, want) {
		t.Fatalf("claim of 1: %v, want %v", got, want)
	}
	if _, got := b.claimKeys(t, 10); !slices.Equal(got, []string{"r.010"}) {
		t.Fatalf("claim beside an unsettled promotion: %v, want [r.010]", got)
	}
	b.settle(t, small, 0)
	if _, got := b.claimKeys(t, 10); !slices.Equal(got, []string{"r.008", "r.009"}) {
		t.Fatalf("claim after the settle: %v, want [r.008 r.009]", got)
	}
}

// Rows held behind an earlier row of their key that backs off do not fill
// the batch: the claim passes over them to the rows behind. The first
// version of the claim counted them against its limit before dropping
// them, so a key with a batch of rows queued behind a failing row stalled
// every other row.
func TestClaimPassesOverHeldRows(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	b.env.Exec(t, `insert into {{t}} (routing_key, payload, partition_key, available_at)
values ('held.first', 'x', 'k', now() + interval '1 hour')`)
	b.env.Exec(t, `insert into {{t}} (routing_key, payload, partition_key)
select 'held', 'x', 'k' from generate_series(1, 20)`)
	b.env.Exec(t, `insert into {{t}} (routing_key, payload)
select 'r.' || lpad(i::text, 3, '0'), 'x' from generate_series(1, 5) i`)
	if _, got := b.claimKeys(t, 10); !slices.Equal(got, keys(1, 5)) {
		t.Fatalf("claim %v, want %v", got, keys(1, 5))
	}
}

// Due rows that wait behind an earlier row of their key not due yet are
// neither promoted nor counted against the batch: however many of them
// there are, another due row behind them is claimed. (They used to be
// promoted, held back by the claim and rolled back again at every claim,
// keeping every due row behind them where it was.)
func TestClaimPromotesPastDueRowsThatMustWait(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	for i := 1; i <= 10; i++ {
		b.env.Exec(t, `insert into {{t}} (routing_key, payload, partition_key, available_at)
values ('early', 'x', $1, now() + interval '1 day')`, fmt.Sprint("k", i))
	}
	for i := 1; i <= 10; i++ {
		b.env.Exec(t, `insert into {{t}} (routing_key, payload, partition_key, available_at)
values ('waits', 'x', $1, now() - interval '2 minutes')`, fmt.Sprint("k", i))
	}
	b.env.Exec(t, `insert into {{t}} (routing_key, payload, available_at) values ('r.001', 'x', now() - interval '1 minute')`)

	if _, got := b.claimKeys(t, 10); !slices.Equal(got, keys(1, 1)) {
		t.Fatalf("claim of 10: %v, want %v", got, keys(1, 1))
	}
	var moved int
	err := b.env.Pool.QueryRow(context.Background(),
		"select count(*) from "+b.env.Table.Ident()+" where routing_key = 'waits' and available_at = created_at").Scan(&moved)
	if err != nil || moved != 0 {
		t.Errorf("%d rows that must wait were moved to the claim index (%v)", moved, err)
	}
}
