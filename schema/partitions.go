package schema

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Partitions (migration 007). Rows map to P partitions by their
// partition_key (see <table>_partition); each partition is owned by one
// relay at a time, so that several relays share a table and every key
// still goes out in order.
const (
	// DefaultPartitions is P for a table that `outbox-relay migrate`
	// creates without OUTBOX_PARTITIONS: 1, 2, 3, 4 and 6 relays get
	// equal shares.
	DefaultPartitions = 12
	// MaxPartitions is the largest P: each relay holds a lock per
	// partition it owns, and each claim one per partition it claims for,
	// which fits PostgreSQL's default lock table (64 locks per
	// connection) with room to spare.
	MaxPartitions = 256
)

// ValidPartitions checks a number of partitions.
func ValidPartitions(p int) error {
	if p < 1 || p > MaxPartitions {
		return fmt.Errorf("partitions must be between 1 and %d, got %d", MaxPartitions, p)
	}
	return nil
}

// PartitionLockKey returns the advisory lock key of partition p for
// purpose: "leader" (ownership, held by the owner's LISTEN session) or
// "inflight" (held shared by each claim of p until it is settled).
// Partition 0's keys are the table's single-leader keys, so a relay of a
// table with one partition is exactly the leader of before.
func (t Table) PartitionLockKey(purpose string, p int) int64 {
	if p == 0 {
		return t.LockKey(purpose)
	}
	return t.LockKey(purpose + "/" + strconv.Itoa(p))
}

// PartitionLockKeys returns the keys of partitions 0 to p-1 for purpose.
func (t Table) PartitionLockKeys(purpose string, p int) []int64 {
	keys := make([]int64, p)
	for i := range keys {
		keys[i] = t.PartitionLockKey(purpose, i)
	}
	return keys
}

// querier is what reading P needs: a connection, a pool or a transaction.
type querier interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}

// ReadPartitions returns table t's number of partitions, and whether the
// table records one (migration 007): a table that does not has 1. It asks
// whether the settings table exists first, rather than have a missing one
// fill the server's log with errors.
func ReadPartitions(ctx context.Context, q querier, t Table) (p int, recorded bool, err error) {
	err = q.QueryRow(ctx, "select to_regclass($1) is not null", t.Derived("settings")).Scan(&recorded)
	if err == nil && recorded {
		err = q.QueryRow(ctx, "select partitions from "+t.Derived("settings")).Scan(&p)
	}
	switch {
	case err != nil:
		return 0, false, fmt.Errorf("read partitions of %s: %w", t, err)
	case !recorded:
		return 1, false, nil
	}
	return p, true, nil
}

// SetPartitions changes table t's number of partitions to p and returns
// what it was. It waits, up to wait, for every claim made under the old
// number to be settled, by taking each old partition's "in flight" lock
// exclusively (relays claim nothing meanwhile), and records p in the same
// transaction. Relays notice at their next look: claims check P, so none
// claims under the old mapping once it commits, and no key is ever in
// flight under two mappings at once. conn must be a session of its own.
func SetPartitions(ctx context.Context, conn *pgx.Conn, t Table, p int, wait time.Duration) (old int, err error) {
	if err := ValidPartitions(p); err != nil {
		return 0, err
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf("set local lock_timeout = %d", wait.Milliseconds())); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, "select partitions from "+t.Derived("settings")+" for update").Scan(&old); err != nil {
			return fmt.Errorf("read partitions: %w", err)
		}
		if old == p {
			return nil
		}
		if _, err := tx.Exec(ctx, "select pg_advisory_xact_lock(k) from unnest($1::bigint[]) k",
			t.PartitionLockKeys("inflight", old)); err != nil {
			return fmt.Errorf("wait for the claims in flight to settle: %w", err)
		}
		_, err := tx.Exec(ctx, "update "+t.Derived("settings")+" set partitions = $1", p)
		return err
	})
	if err != nil {
		return old, fmt.Errorf("set partitions of %s to %d: %w", t, p, err)
	}
	return old, nil
}
