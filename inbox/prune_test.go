package inbox_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/inbox"
)

// countingPruner counts Prune's statements and the rows each deleted.
type countingPruner struct {
	*pgxpool.Pool
	mu      sync.Mutex
	deletes []int64
}

func (p *countingPruner) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := p.Pool.Exec(ctx, sql, args...)
	p.mu.Lock()
	p.deletes = append(p.deletes, tag.RowsAffected())
	p.mu.Unlock()
	return tag, err
}

// Prune deletes only claims older than the cut-off, in batches of at most
// the size given, while consumers keep claiming.
func TestPruneOldClaimsInBatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const old, recent, batch = 2300, 200, 500
	if _, err := b.env.Pool.Exec(ctx, "insert into "+b.inbox.Ident()+" (consumer, message_id, received_at) "+
		"select 'c' || (i % 3), gen_random_uuid(), now() - interval '8 days' - i * interval '1 second' from generate_series(1, $1) i", old); err != nil {
		t.Fatal(err)
	}
	if _, err := b.env.Pool.Exec(ctx, "insert into "+b.inbox.Ident()+" (consumer, message_id, received_at) "+
		"select 'c', gen_random_uuid(), now() - interval '6 days' from generate_series(1, $1)", recent); err != nil {
		t.Fatal(err)
	}

	// Consumers claim throughout.
	ib := inbox.New(b.inbox)
	var claimed atomic.Int64
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for cctx.Err() == nil {
				tx, err := b.env.Pool.Begin(cctx)
				if err != nil {
					return
				}
				ok, err := ib.Claim(cctx, tx, "c", newIDs(1)[0])
				if err == nil && ok && tx.Commit(cctx) == nil {
					claimed.Add(1)
				}
				_ = tx.Rollback(ctx)
			}
		})
	}
	metrics, reg := newMetrics(t)
	p := &countingPruner{Pool: b.env.Pool}
	n, err := inbox.Prune(ctx, p, b.inbox, 7*24*time.Hour, batch, inbox.WithMetrics(metrics))
	during := claimed.Load()
	cancel()
	wg.Wait()
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if n != old {
		t.Errorf("pruned %d; want %d", n, old)
	}
	if want := []int64{500, 500, 500, 500, 300}; len(p.deletes) != len(want) || p.deletes[0] != batch || p.deletes[4] != 300 {
		t.Errorf("batches %v; want %v", p.deletes, want)
	}
	var leftOld, leftRecent, leftNew int64
	if err := b.env.Pool.QueryRow(ctx, `select count(*) filter (where received_at < now() - interval '7 days'),
		count(*) filter (where received_at between now() - interval '7 days' and now() - interval '1 day'),
		count(*) filter (where received_at > now() - interval '1 day') from `+b.inbox.Ident()).Scan(&leftOld, &leftRecent, &leftNew); err != nil {
		t.Fatal(err)
	}
	// A commit cut short by cancel may have happened without being counted.
	if leftOld != 0 || leftRecent != recent || leftNew < claimed.Load() {
		t.Errorf("left %d old, %d recent and %d new claims; want 0, %d and the %d claimed meanwhile", leftOld, leftRecent, leftNew, recent, claimed.Load())
	}
	if during == 0 {
		t.Error("no claim committed while Prune ran")
	}
	t.Logf("pruned %d in batches %v while consumers claimed %d", n, p.deletes, during)
	wantMetrics(t, reg, "inbox_pruned_rows_total 2300\n")

	for _, bad := range []struct {
		d     time.Duration
		batch int
	}{{0, 10}, {-time.Hour, 10}, {time.Hour, -1}} {
		if _, err := inbox.Prune(ctx, b.env.Pool, b.inbox, bad.d, bad.batch); err == nil {
			t.Errorf("Prune(older than %s, batch %d): no error", bad.d, bad.batch)
		}
	}
}
