package schema_test

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// A migration that needs the table's exclusive lock while a relay holds a
// claim open waits for the lock only briefly at a time, so writers queued
// behind it are not stalled for long, and applies once the claim ends.
func TestMigrateWaitsForLockWithoutStallingWriters(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	ctx := context.Background()
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	// The table as migration 001 left it.
	sql, err := ms[0].SQL(e.Table)
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		sql,
		`create table ` + e.Table.Derived("schema_migrations") + ` (version int primary key, name text not null, applied_at timestamptz not null default now())`,
		`insert into ` + e.Table.Derived("schema_migrations") + ` (version, name) values (1, 'outbox')`,
		`insert into ` + e.Table.Ident() + ` (routing_key, payload) values ('k', 'x')`,
	} {
		if _, err := e.Pool.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}

	migrateBehindClaim(t, e)
	if w, err := schema.RelayWaiting(ctx, e.Pool, e.Table); err != nil || w {
		t.Errorf("after migration 002: RelayWaiting = %v, %v", w, err)
	}
}

// migrateBehindClaim runs Migrate on e's table while a claim, as a relay's,
// holds its rows locked: writers must get through between the migration's
// attempts, the migration must wait for the claim, and finish once the
// claim ends.
func migrateBehindClaim(t *testing.T, e *testenv.Env) {
	t.Helper()
	ctx := context.Background()
	claim, err := e.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer claim.Rollback(ctx)
	if _, err := claim.Exec(ctx, "select id from "+e.Table.Ident()+" for update skip locked"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	conn := testenv.Conn(t)
	go func() {
		_, err := schema.Migrate(ctx, conn, e.Table)
		done <- err
	}()
	for i := range 3 {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := e.Pool.Exec(wctx, "insert into "+e.Table.Ident()+" (routing_key, payload) values ('k', 'x')")
		cancel()
		if err != nil {
			t.Fatalf("writer %d stalled behind the migration: %v", i, err)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("migration finished while a claim held the table: %v", err)
	default:
	}
	if err := claim.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("migrate: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("migration did not finish after the claim ended")
	}
}
