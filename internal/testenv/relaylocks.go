package testenv

import (
	"context"
	"testing"

	"github.com/outbox-relay/outbox-relay/schema"
)

// HoldRelayLocks makes a session of the test's own look like a relay's
// LISTEN session on table tbl: named appName, holding the table's relays
// lock, the members lock if member, and the locks of the partitions owned.
// It returns the session's backend pid; the session ends with the test.
func HoldRelayLocks(t testing.TB, tbl schema.Table, appName string, member bool, owned ...int) int32 {
	t.Helper()
	ctx := context.Background()
	conn := Conn(t)
	keys := []int64{tbl.LockKey("relays")}
	if member {
		keys = append(keys, tbl.LockKey("members"))
	}
	var pid int32
	if err := conn.QueryRow(ctx, `select pg_backend_pid(), set_config('application_name', $1, false),
		(select count(pg_advisory_lock_shared(k)) from unnest($2::bigint[]) k)`, appName, keys).Scan(&pid, nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range owned {
		if _, err := conn.Exec(ctx, "select pg_advisory_lock($1)", tbl.PartitionLockKey("leader", p)); err != nil {
			t.Fatal(err)
		}
	}
	return pid
}
