package inbox_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// Claim works in pgx and database/sql transactions alike, per consumer,
// and a rollback undoes it.
func TestClaimPgxAndSQL(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ib := inbox.New(b.inbox)
	db, err := sql.Open("pgx", b.env.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })

	claimPgx := func(consumer, id string, commit bool) bool {
		t.Helper()
		tx, err := b.env.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		first, err := ib.Claim(ctx, tx, consumer, id)
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		if commit {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return first
	}
	claimSQL := func(consumer, id string, commit bool) bool {
		t.Helper()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		first, err := ib.ClaimSQL(ctx, tx, consumer, id)
		if err != nil {
			t.Fatalf("ClaimSQL: %v", err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		return first
	}
	id := outbox.NewMessageID().String()
	for i, step := range []struct {
		claim    func(consumer, id string, commit bool) bool
		consumer string
		commit   bool
		want     bool
	}{
		{claimPgx, "billing", false, true},   // rolled back
		{claimSQL, "billing", false, true},   // so still the first; rolled back too
		{claimSQL, "billing", true, true},    // committed
		{claimPgx, "billing", true, false},   // a duplicate, whatever the driver
		{claimSQL, "billing", true, false},   //
		{claimPgx, "shipping", true, true},   // another consumer sees it once too
		{claimSQL, "shipping", false, false}, //
	} {
		if got := step.claim(step.consumer, id, step.commit); got != step.want {
			t.Errorf("step %d (%s, commit %t): first %t, want %t", i+1, step.consumer, step.commit, got, step.want)
		}
	}
}

// A second transaction claiming an id that an open one has claimed waits
// for it: false once it commits, true if it rolls back (READ COMMITTED).
// Under REPEATABLE READ the second fails with 40001 instead.
func TestClaimConcurrentWaitsForFirst(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ib := inbox.New(b.inbox)
	for _, tt := range []struct {
		name     string
		commit   bool
		iso      pgx.TxIsoLevel
		want     bool
		wantCode string
	}{
		{"first commits", true, pgx.ReadCommitted, false, ""},
		{"first rolls back", false, pgx.ReadCommitted, true, ""},
		{"first commits, repeatable read", true, pgx.RepeatableRead, false, "40001"},
		{"first rolls back, repeatable read", false, pgx.RepeatableRead, true, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			id := outbox.NewMessageID().String()
			first, err := b.env.Pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = first.Rollback(ctx) }()
			if ok, err := ib.Claim(ctx, first, "billing", id); !ok || err != nil {
				t.Fatalf("first claim: %t, %v", ok, err)
			}
			second, err := b.env.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: tt.iso})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = second.Rollback(ctx) }()
			var pid uint32
			if err := second.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil { // also takes the snapshot
				t.Fatal(err)
			}
			type result struct {
				ok  bool
				err error
			}
			res := make(chan result, 1)
			go func() {
				ok, err := ib.Claim(ctx, second, "billing", id)
				res <- result{ok, err}
			}()
			testenv.WaitFor(t, 10*time.Second, "the second claim to wait on a lock", func() bool {
				var waiting bool
				err := b.env.Pool.QueryRow(ctx, "select exists (select from pg_locks where pid = $1 and not granted)", pid).Scan(&waiting)
				return err == nil && waiting
			})
			if tt.commit {
				err = first.Commit(ctx)
			} else {
				err = first.Rollback(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			r := <-res
			var pe *pgconn.PgError
			switch {
			case tt.wantCode != "":
				if !errors.As(r.err, &pe) || pe.Code != tt.wantCode {
					t.Errorf("second claim: %t, %v; want SQLSTATE %s", r.ok, r.err, tt.wantCode)
				}
			case r.err != nil || r.ok != tt.want:
				t.Errorf("second claim: %t, %v; want %t", r.ok, r.err, tt.want)
			}
		})
	}
}
