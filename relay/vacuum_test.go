package relay_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// insertN inserts n rows routed to the test's queue.
func insertN(t *testing.T, b *testBundle, n int) {
	t.Helper()
	_, err := b.env.Pool.Exec(context.Background(), `insert into `+b.env.Table.Ident()+` (exchange, routing_key, payload)
select $1, 'k', 'x' from generate_series(1, $2)`, b.exchange, n)
	if err != nil {
		t.Fatal(err)
	}
}

// vacuumCount is how many times the table was vacuumed by hand (not by
// autovacuum).
func vacuumCount(t *testing.T, b *testBundle) int64 {
	t.Helper()
	var n int64
	err := b.env.Pool.QueryRow(context.Background(),
		"select vacuum_count from pg_stat_user_tables where relid = $1::regclass", b.env.Table.Ident()).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The relay vacuums its table after every VacuumEvery deleted rows.
func TestRelayVacuumsAfterDeletes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config(t)
	cfg.VacuumEvery = 100
	start(t, cfg)

	insertN(t, b, 50)
	testenv.Receive(t, b.recv, 50, 10*time.Second)
	time.Sleep(notificationLeeway)
	if n := vacuumCount(t, b); n != 0 {
		t.Fatalf("vacuumed %d times after 50 deletes, want 0", n)
	}
	insertN(t, b, 60)
	testenv.Receive(t, b.recv, 60, 10*time.Second)
	testenv.WaitFor(t, 10*time.Second, "a vacuum after 110 deletes", func() bool { return vacuumCount(t, b) == 1 })
}

// A relay whose role has only the grants the README lists (and does not own
// the table) relays every row, says once that it leaves vacuuming to
// autovacuum, and keeps its wake-up flag working.
func TestRelayRunsAsRoleWithREADMEGrants(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	role := b.env.Name + "_relay"
	qrole := pgx.Identifier{role}.Sanitize()
	for _, sql := range []string{
		"create role " + qrole + " login",
		"grant usage on schema " + pgx.Identifier{b.env.Name}.Sanitize() + " to " + qrole,
		"grant select, update, delete on " + b.env.Table.Ident() + " to " + qrole,
		"grant update on sequence " + b.env.Table.Derived("relay_waiting") + " to " + qrole,
	} {
		if _, err := b.env.Pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	t.Cleanup(func() {
		// The relay's sessions are closed by the time cleanups run.
		for _, sql := range []string{"drop owned by " + qrole, "drop role " + qrole} {
			if _, err := b.env.Pool.Exec(context.Background(), sql); err != nil {
				t.Errorf("%s: %v", sql, err)
			}
		}
	})
	u, err := url.Parse(testenv.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)

	logs, logger := testenv.BufferedLogger(t)
	cfg := b.config(t)
	cfg.DatabaseURL = u.String()
	cfg.VacuumEvery = 10
	cfg.Logger = logger
	stop := start(t, cfg)

	insertN(t, b, 30)
	testenv.Receive(t, b.recv, 30, 10*time.Second)
	b.env.WaitRelayIdle(t)
	insertN(t, b, 1)
	testenv.Receive(t, b.recv, 1, 5*time.Second)
	testenv.WaitFor(t, 5*time.Second, "the relay to give up vacuuming", func() bool {
		return strings.Contains(logs.String(), "cannot vacuum the table")
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(logs.String(), "cannot vacuum the table"); got != 1 {
		t.Errorf("said %d times that it cannot vacuum, want once", got)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("errors with the README's grants:\n%s", logs)
	}
	if n := vacuumCount(t, b); n != 0 {
		t.Errorf("table vacuumed %d times", n)
	}
	var left int
	if err := b.env.Pool.QueryRow(ctx, fmt.Sprintf("select count(*) from %s", b.env.Table.Ident())).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d rows left, %v", left, err)
	}
}
