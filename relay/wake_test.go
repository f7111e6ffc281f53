package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// wakeBound is how soon after its commit a row must arrive when only a
// wake-up can deliver it: the relay polls once a minute.
const wakeBound = 250 * time.Millisecond

// A row is published right after its writer commits, however long the
// writer's transaction ran after the row was enqueued and whatever the relay
// did meanwhile (migration 005): the relay polls once a minute here, so a
// row that missed its wake-up would wait that long.
func TestRelayWakesAtCommit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// before runs before the writer enqueues; the relay is running
		// unless it says otherwise.
		before func(t *testing.T, b *testBundle, startRelay func())
		// slowCommit makes the writer's COMMIT itself take that long (a
		// deferred trigger of another table), instead of working that
		// long before it.
		slowCommit bool
	}{{
		name: "enqueued, then work, then commit while the relay goes to sleep",
		// The relay starts while the writer's transaction is open: it
		// lowers the flag, finds nothing, and goes to sleep.
		before: func(*testing.T, *testBundle, func()) {},
	}, {
		name: "enqueued during a burst, committed after it",
		before: func(t *testing.T, b *testBundle, startRelay func()) {
			startRelay()
			burst(t, b, 6000)
		},
	}, {
		name: "commit slowed by a later deferred trigger",
		before: func(t *testing.T, b *testBundle, startRelay func()) {
			startRelay()
			burst(t, b, 6000)
		},
		slowCommit: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := context.Background()
			cfg := b.config(t)
			cfg.PollInterval = time.Minute
			started := make(chan struct{})
			startRelay := func() {
				select {
				case <-started:
					return
				default:
				}
				close(started)
				start(t, cfg)
			}
			slow := b.env.Name + "_slow"
			if tc.slowCommit {
				for _, sql := range []string{
					"create table " + pgx.Identifier{b.env.Name, slow}.Sanitize() + " (id int)",
					`create function ` + pgx.Identifier{b.env.Name, slow}.Sanitize() + `() returns trigger language plpgsql as
					 $$ begin perform pg_sleep(0.4); return null; end $$`,
					"create constraint trigger slow after insert on " + pgx.Identifier{b.env.Name, slow}.Sanitize() +
						" deferrable initially deferred for each row execute function " + pgx.Identifier{b.env.Name, slow}.Sanitize() + "()",
				} {
					if _, err := b.env.Pool.Exec(ctx, sql); err != nil {
						t.Fatalf("%s: %v", sql, err)
					}
				}
			}
			tc.before(t, b, startRelay)

			tx, err := b.env.Pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			ids := insert(t, tx, b, row{exchange: b.exchange, key: "late", payload: []byte(`{}`)})
			if tc.slowCommit {
				if _, err := tx.Exec(ctx, "insert into "+pgx.Identifier{b.env.Name, slow}.Sanitize()+" values (1)"); err != nil {
					t.Fatal(err)
				}
			} else {
				// The relay, started or done with its burst, goes to
				// sleep meanwhile.
				startRelay()
				time.Sleep(400 * time.Millisecond) // the writer's work after enqueueing
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			committed := time.Now()
			deadline := time.After(wakeBound)
			for {
				select {
				case d := <-b.recv:
					if d.MessageId != ids[0] {
						continue
					}
					t.Logf("published %s after the commit", time.Since(committed).Round(time.Millisecond))
					return
				case <-deadline:
					waiting, err := schema.RelayWaiting(ctx, b.env.Pool, b.env.Table)
					t.Fatalf("row not published within %s of its commit (relay waiting: %t, %v)", wakeBound, waiting, err)
				}
			}
		})
	}
}

// burst writes n rows in one statement and waits until the relay, busy
// with them, has lowered the wake-up flag: writers stop notifying.
func burst(t *testing.T, b *testBundle, n int) {
	t.Helper()
	b.env.WaitRelayIdle(t)
	if _, err := b.env.Pool.Exec(context.Background(), `insert into `+b.env.Table.Ident()+` (exchange, routing_key, payload)
		select $1, 'burst', '{}' from generate_series(1, $2)`, b.exchange, n); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the relay to lower the flag", func() bool {
		waiting, err := schema.RelayWaiting(context.Background(), b.env.Pool, b.env.Table)
		return err == nil && !waiting
	})
}
