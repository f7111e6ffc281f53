package relay

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// leadWith makes b's store claim as a leader whose lock session is a
// connection of the test's own.
func (b *storeBundle) leadWith(t *testing.T) {
	t.Helper()
	pid, _ := lockSession(t, b.env.Table)
	b.store.SetOwner(pid, []int{0})
}

// lockSession opens a connection of the test's own that holds what a
// relay's LISTEN session holds as partition 0's owner: the leader lock and
// its session lock (see sessionLockKey), and returns its backend pid and
// the connection.
func lockSession(t *testing.T, tbl schema.Table) (int32, *pgx.Conn) {
	t.Helper()
	conn := testenv.Conn(t)
	ctx := context.Background()
	var pid int32
	if err := conn.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "select pg_advisory_lock($1), pg_advisory_lock($2)",
		tbl.LockKey("leader"), sessionLockKey(tbl, pid)); err != nil {
		t.Fatal(err)
	}
	return pid, conn
}

// A claim takes rows only while the owner's LISTEN session lives: once it
// is gone, and another session owns the partition, the deposed owner's
// claims take nothing.
func TestClaimStopsWithItsSession(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	pid, conn := lockSession(t, b.env.Table)
	b.store.SetOwner(pid, []int{0})
	b.env.Exec(t, `insert into {{t}} (exchange, routing_key, payload)
		select '', 'r.' || lpad(i::text, 3, '0'), '\x00' from generate_series(1, 4) i`)
	c, got := b.claimKeys(t, 1)
	if !slices.Equal(got, keys(1, 1)) {
		t.Fatalf("owner claimed %v", got)
	}
	b.settle(t, c, 0)
	if err := conn.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the session's locks to go", func() bool {
		var held bool
		err := b.env.Pool.QueryRow(context.Background(), "select not pg_try_advisory_xact_lock($1)", b.env.Table.LockKey("leader")).Scan(&held)
		return err == nil && !held
	})
	next, _ := lockSession(t, b.env.Table) // the new owner
	if next == pid {
		t.Fatalf("the new owner's session reused pid %d", pid)
	}
	if _, got := b.claimKeys(t, 4); len(got) != 0 {
		t.Fatalf("a claim after the owner's session ended took %v", got)
	}
}

// A new leader's fence waits for every claim made before it to settle; a
// deposed leader's claims made meanwhile take nothing, so it cannot add to
// what the new leader waits for, nor deadlock with it.
func TestFenceWaitsForEarlierClaims(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	b.leadWith(t)
	b.env.Exec(t, `insert into {{t}} (exchange, routing_key, payload)
		select '', 'r.' || lpad(i::text, 3, '0'), '\x00' from generate_series(1, 10) i`)
	old, got := b.claimKeys(t, 4)
	if !slices.Equal(got, keys(1, 4)) {
		t.Fatalf("old leader claimed %v", got)
	}

	fence := make(chan error, 1)
	next := newStore(b.env.Pool, b.env.Table, 10, nil)
	go func() { fence <- next.Fence(context.Background(), 10*time.Second, []int{0}) }()
	testenv.WaitFor(t, 5*time.Second, "the fence to wait for the lock", func() bool {
		var waiting bool
		classid, objid := lockParts(b.env.Table.LockKey("inflight"))
		err := b.env.Pool.QueryRow(context.Background(), `select exists (select 1 from pg_locks
			where locktype = 'advisory' and not granted and mode = 'ExclusiveLock'
			  and classid = $1::bigint::oid and objid = $2::bigint::oid)`, classid, objid).Scan(&waiting)
		return err == nil && waiting
	})
	select {
	case err := <-fence:
		t.Fatalf("fence returned while a claim was unsettled: %v", err)
	case <-time.After(100 * time.Millisecond):
	}

	// The old leader still has rows available, but claims none now.
	if _, got := b.claimKeys(t, 4); len(got) != 0 {
		t.Fatalf("a claim during the fence took %v", got)
	}
	b.settle(t, old, 0)
	select {
	case err := <-fence:
		if err != nil {
			t.Fatalf("fence: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("fence did not return after the claim settled")
	}
	if _, got := b.claimKeys(t, 4); !slices.Equal(got, keys(5, 8)) {
		t.Fatalf("after the fence the leader claimed %v, want %v", got, keys(5, 8))
	}
}

// A fence whose earlier claim never settles gives up after its bound.
func TestFenceGivesUp(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	b.leadWith(t)
	b.env.Exec(t, `insert into {{t}} (exchange, routing_key, payload) values ('', 'r.001', '\x00')`)
	b.claimKeys(t, 1)
	next := newStore(b.env.Pool, b.env.Table, 10, nil)
	begin := time.Now()
	if err := next.Fence(context.Background(), 200*time.Millisecond, []int{0}); err == nil {
		t.Fatal("fence returned nil with a claim unsettled")
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("fence gave up after %s, want about 200ms", d)
	}
}
