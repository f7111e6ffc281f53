package relay_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// A table at migration 004 with rows in it, a relay of this version
// running against it and writers calling outbox_enqueue the old way, is
// migrated to the newest version: every row arrives, old calls keep
// working throughout, and a row written with properties right after the
// migration arrives with them (the running relay switches to the new
// columns rather than drop them).
func TestUpgradeWithRelayRunning(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	e.MigrateTo(t, 4)
	ex := e.Exchange(t, "events", "topic")
	q := e.Queue(t, "all", ex, "#")
	b := &testBundle{env: e, exchange: ex, queue: q, recv: e.Consume(t, q)}
	ctx := context.Background()
	fn := e.Table.Derived("enqueue")

	want := map[string]bool{}
	var mu sync.Mutex
	enqueueOld := func(ctx context.Context) error {
		var id string
		err := e.Pool.QueryRow(ctx, `select `+fn+`($1, 'old', '{"v": 1}'::jsonb, '{"h": 1}', 'key-1')::text`, ex).Scan(&id)
		if err == nil {
			mu.Lock()
			want[id] = true
			mu.Unlock()
		}
		return err
	}
	for range 50 {
		if err := enqueueOld(ctx); err != nil {
			t.Fatal(err)
		}
	}
	start(t, b.config(t))

	// Writers keep writing, the old way, while the table is migrated.
	wctx, stopWriters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for wctx.Err() == nil {
			if err := enqueueOld(wctx); err != nil && wctx.Err() == nil {
				writeErr = err
				return
			}
		}
	}()
	applied, err := schema.Migrate(ctx, testenv.Conn(t), e.Table)
	if err != nil || len(applied) == 0 || applied[len(applied)-1].Version != schema.LatestVersion() {
		t.Fatalf("migrate: applied %v, %v", applied, err)
	}
	for range 20 {
		if err := enqueueOld(ctx); err != nil {
			t.Fatalf("old-style call after the migration: %v", err)
		}
	}
	stopWriters()
	wg.Wait()
	if writeErr != nil {
		t.Fatalf("old-style call during the migration: %v", writeErr)
	}
	var newID string
	if err := e.Pool.QueryRow(ctx, `select `+fn+`(exchange => $1, routing_key => 'new', payload => 'x'::text,
		type => 'job.completed', priority => 3)::text`, ex).Scan(&newID); err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	n := len(want)
	mu.Unlock()
	deadline := time.After(60 * time.Second)
	for len(want) > 0 || newID != "" {
		select {
		case d := <-b.recv:
			delete(want, d.MessageId)
			if d.MessageId == newID {
				if d.Type != "job.completed" || d.Priority != 3 {
					t.Errorf("row written after the migration: type %q priority %d; want job.completed, 3", d.Type, d.Priority)
				}
				newID = ""
			}
		case <-deadline:
			t.Fatalf("%d of %d old-style rows and the new row (%t) did not arrive", len(want), n, newID != "")
		}
	}
}

// A relay refuses a table whose schema is newer than it knows, saying so,
// rather than publish rows whose new columns it would drop.
func TestRelayRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	newer := schema.LatestVersion() + 1
	if _, err := b.env.Pool.Exec(ctx, "insert into "+b.env.Table.Derived("schema_migrations")+" (version, name) values ($1, 'from_the_future')", newer); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(b.config(t))
	if err != nil {
		t.Fatal(err)
	}
	err = r.Run(ctx)
	var tooNew *relay.SchemaTooNewError
	if !errors.As(err, &tooNew) || tooNew.Version != newer || tooNew.Known != schema.LatestVersion() || ctx.Err() != nil {
		t.Fatalf("Run = %v; want a SchemaTooNewError at once", err)
	}
	t.Log(err)
}
