package relay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// partitionedRows gives e's table P = 4 and rows over many keys whose age
// follows their partition: the rows of partition p are (p+1)·10 min old.
// Partition 1 has no rows.
func partitionedRows(t *testing.T, e *testenv.Env) {
	t.Helper()
	ctx := context.Background()
	if _, err := schema.SetPartitions(ctx, testenv.Conn(t), e.Table, 4, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	fn := e.Table.Derived("partition")
	// In id order, as the relay reads the lag: partition 3's rows first.
	if _, err := e.Pool.Exec(ctx, `insert into `+e.Table.Ident()+` (routing_key, partition_key, payload, created_at, available_at)
		select 'r', k, 'x', now() - (p + 1) * interval '10 minutes', now() - (p + 1) * interval '10 minutes'
		  from (select 'k' || i as k, `+fn+`('k' || i, 0, 4) as p from generate_series(1, 40) i) s
		 where p <> 1
		 order by p desc, k`); err != nil {
		t.Fatal(err)
	}
	var parts int
	if err := e.Pool.QueryRow(ctx, `select count(distinct `+fn+`(partition_key, id, 4)) from `+e.Table.Ident()).Scan(&parts); err != nil {
		t.Fatal(err)
	}
	if parts != 3 {
		t.Fatalf("rows in %d partitions, want 3 (0, 2 and 3)", parts)
	}
}

func gaugeRelay(t *testing.T) (*Relay, *testenv.Buffer) {
	logs, logger := testenv.BufferedLogger(t)
	return &Relay{cfg: Config{Logger: logger}.withDefaults(), log: logger, metrics: newMetrics(prometheus.NewRegistry())}, logs
}

// The gauge refresh exports the table's P, and the lag of the partitions
// the relay owns: 0 for none, the table's for all of them.
func TestGaugesOwnedLagAndPartitions(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	partitionedRows(t, e)
	r, _ := gaugeRelay(t)
	q := newGaugeQueries(e.Table)
	ctx := context.Background()
	var warned bool
	near := func(got, want float64) bool { return got > want-60 && got < want+60 }
	for _, c := range []struct {
		name string
		o    *ownership
		want float64
	}{
		{"none", nil, 0},
		{"0 and 2", &ownership{owned: []int{0, 2}, partitions: 4}, 1800},
		{"1 alone, without rows", &ownership{owned: []int{1}, partitions: 4}, 0},
		{"all", &ownership{owned: []int{0, 1, 2, 3}, partitions: 4}, 2400},
	} {
		// Without ownership the gauges read P themselves; with, they
		// take the loop's.
		known := 0
		if c.o != nil {
			known = c.o.partitions
		}
		ret, err := r.refreshOnce(ctx, e.Pool, q, c.o, known, &warned)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := testutil.ToFloat64(r.metrics.ownedLag)
		if !near(got, c.want) || (c.want == 0 && got != 0) {
			t.Errorf("%s: outbox_owned_lag_seconds = %v, want about %v", c.name, got, c.want)
		}
		if c.o != nil && ret != got {
			t.Errorf("%s: refresh returned lag %v for the stall check, want the owned lag %v", c.name, ret, got)
		}
		if lag := testutil.ToFloat64(r.metrics.lag); !near(lag, 2400) {
			t.Errorf("%s: outbox_lag_seconds = %v, want about 2400", c.name, lag)
		}
		if p := testutil.ToFloat64(r.metrics.partitions); p != 4 {
			t.Errorf("%s: outbox_partitions = %v, want 4", c.name, p)
		}
	}
}

// A table before migration 007 has one partition, and no failing query
// says so.
func TestGaugesPartitionsBeforeMigration007(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	e.MigrateTo(t, 6) // before 007, which records P
	r, _ := gaugeRelay(t)
	r.metrics.partitions.Set(-1)
	var warned bool
	if _, err := r.refreshOnce(context.Background(), e.Pool, newGaugeQueries(e.Table), nil, 0, &warned); err != nil {
		t.Fatal(err)
	}
	if p := testutil.ToFloat64(r.metrics.partitions); p != 1 {
		t.Errorf("outbox_partitions = %v, want 1", p)
	}
}

// A relay that owns some of the partitions is stalled only by rows of
// those: rows of other relays' partitions waiting are theirs to claim.
func TestStallCheckConsidersOwnedPartitionsOnly(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	partitionedRows(t, e)
	q := newGaugeQueries(e.Table)
	long := time.Now().Add(-time.Minute).UnixNano()
	for _, c := range []struct {
		name    string
		o       *ownership
		stalled bool
	}{
		{"partition 1, without rows", &ownership{owned: []int{1}, partitions: 4}, false},
		{"partitions 1 and 3", &ownership{owned: []int{1, 3}, partitions: 4}, true},
		{"all", &ownership{owned: []int{0, 1, 2, 3}, partitions: 4}, true},
		{"not said", nil, true},
	} {
		r, logs := gaugeRelay(t)
		p := &progress{}
		p.leaderSince.Store(long)
		p.lastRows.Store(long)
		var warned bool
		if err := r.checkStall(context.Background(), e.Pool, q, func() int32 { return 0 }, p, c.o, 3000, &warned); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := testutil.ToFloat64(r.metrics.stalled) == 1; got != c.stalled {
			t.Errorf("%s: outbox_stalled = %t, want %t; logs:\n%s", c.name, got, c.stalled, logs)
		}
		if c.stalled && c.o != nil && !c.o.all() && !strings.Contains(logs.String(), "partitions=") {
			t.Errorf("%s: the stall warning does not name the partitions:\n%s", c.name, logs)
		}
	}
}

// setLeader(0), as on a lost session, forgets the partitions owned.
func TestProgressOwnedClearedWithLeadership(t *testing.T) {
	p := &progress{}
	owned := []int{2, 5}
	p.setOwned(owned, 8)
	owned[0] = 7
	if o := p.owned.Load(); o == nil || o.owned[0] != 2 || o.partitions != 8 || o.all() {
		t.Fatalf("owned = %+v, want partitions 2 and 5 of 8", o)
	}
	p.setLeader(0)
	if o := p.owned.Load(); o != nil {
		t.Errorf("owned after losing leadership = %+v, want none", o)
	}
	p.setOwned([]int{0}, 1)
	p.setOwned(nil, 1)
	if o := p.owned.Load(); o != nil {
		t.Errorf("owned after setOwned(nil) = %+v, want none", o)
	}
}
