package relay

import (
	"context"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// A relay does not lower the wake-up flag while another relay sleeps on
// LISTEN (holds the sleepers lock): that one would wait for its poll. Its
// own sleepers lock does not count.
func TestFlagStaysUpWhileAnotherRelaySleeps(t *testing.T) {
	t.Parallel()
	b := setupStore(t)
	ctx := context.Background()
	own, other := testenv.Conn(t), testenv.Conn(t)
	var ownPID int32
	key := b.env.Table.LockKey("sleepers")
	if err := own.QueryRow(ctx, "select pg_advisory_lock_shared($1)::text, pg_backend_pid()", key).Scan(nil, &ownPID); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, "select pg_advisory_lock_shared($1)", key); err != nil {
		t.Fatal(err)
	}
	b.store.SetOwner(ownPID, []int{0})
	flag := func() bool {
		t.Helper()
		up, err := schema.RelayWaiting(ctx, b.env.Pool, b.env.Table)
		if err != nil {
			t.Fatal(err)
		}
		return up
	}
	if err := b.store.SetWaiting(ctx, true); err != nil || !flag() {
		t.Fatalf("raise: %v, flag %t", err, flag())
	}
	if err := b.store.SetWaiting(ctx, false); err != nil || !flag() {
		t.Fatalf("lowered while another relay sleeps: %v, flag %t", err, flag())
	}
	if _, err := other.Exec(ctx, "select pg_advisory_unlock_shared($1)", key); err != nil {
		t.Fatal(err)
	}
	if err := b.store.SetWaiting(ctx, false); err != nil || flag() {
		t.Fatalf("not lowered with only this relay asleep: %v, flag %t", err, flag())
	}
}
