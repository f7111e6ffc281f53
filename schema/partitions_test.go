package schema_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// A table migrated to 007 records one partition until told otherwise; one
// before 007 reads as one partition, not recorded; P out of range is
// refused, naming the range.
func TestPartitionsRecorded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := testenv.New(t, testenv.WithoutMigrate())
	e.MigrateTo(t, 6)
	if p, recorded, err := schema.ReadPartitions(ctx, e.Pool, e.Table); err != nil || p != 1 || recorded {
		t.Fatalf("before 007: %d, recorded %t, %v", p, recorded, err)
	}
	conn := testenv.Conn(t)
	if _, err := schema.Migrate(ctx, conn, e.Table); err != nil {
		t.Fatal(err)
	}
	if p, recorded, err := schema.ReadPartitions(ctx, e.Pool, e.Table); err != nil || p != 1 || !recorded {
		t.Fatalf("after 007: %d, recorded %t, %v", p, recorded, err)
	}
	for _, bad := range []int{0, -1, schema.MaxPartitions + 1} {
		if _, err := schema.SetPartitions(ctx, conn, e.Table, bad, time.Second); err == nil || !strings.Contains(err.Error(), "between 1 and 256") {
			t.Errorf("P=%d: %v", bad, err)
		}
	}
	if old, err := schema.SetPartitions(ctx, conn, e.Table, 8, time.Second); err != nil || old != 1 {
		t.Fatalf("set 8: was %d, %v", old, err)
	}
	if p, _, _ := schema.ReadPartitions(ctx, e.Pool, e.Table); p != 8 {
		t.Errorf("P %d, want 8", p)
	}
}

// Changing P waits for the claims in flight under the old P: a claim
// holds its partition's "in flight" lock shared until it is settled.
func TestSetPartitionsWaitsForClaimsInFlight(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := testenv.New(t)
	claim, err := e.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer claim.Rollback(ctx)
	if _, err := claim.Exec(ctx, "select pg_advisory_xact_lock_shared($1)", e.Table.PartitionLockKey("inflight", 0)); err != nil {
		t.Fatal(err)
	}
	conn := testenv.Conn(t)
	if _, err := schema.SetPartitions(ctx, conn, e.Table, 4, 300*time.Millisecond); err == nil {
		t.Fatal("P changed while a claim was in flight")
	}
	done := make(chan error, 1)
	go func() {
		_, err := schema.SetPartitions(ctx, conn, e.Table, 4, 10*time.Second)
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if err := claim.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("P not changed once the claim ended: %v", err)
	}
}

// The partition function maps a key to one partition whatever its id, a
// row without a key by its id, and everything to 0 with one partition.
func TestPartitionFunction(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	var sameKey, byID, one bool
	err := e.Pool.QueryRow(context.Background(), `select
	  (select count(distinct `+e.Table.Derived("partition")+`('order-42', i, 12)) = 1 from generate_series(1, 100) i),
	  (select count(distinct `+e.Table.Derived("partition")+`(null, i, 12)) = 12 from generate_series(1, 100) i),
	  (select bool_and(`+e.Table.Derived("partition")+`('k' || i, i, 1) = 0) from generate_series(1, 100) i)`).Scan(&sameKey, &byID, &one)
	if err != nil || !sameKey || !byID || !one {
		t.Errorf("one key one partition %t, keyless rows by id %t, P=1 all 0 %t: %v", sameKey, byID, one, err)
	}
}
