package relay

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// A relay's LISTEN session hears the rows of the partitions it owns and no
// others (migration 012): another partition's row does not wake its
// process at all, and a partition it gave up goes quiet.
func TestListenerHearsItsPartitionsOnly(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := testenv.New(t)
	if _, err := schema.SetPartitions(ctx, testenv.Conn(t), e.Table, 12, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(testenv.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	_, logger := testenv.BufferedLogger(t)
	l := newListener(cfg, e.Table, probeSession(e.Pool), acquireTracer{log: logger, metrics: newMetrics(prometheus.NewRegistry())},
		func(context.Context, *pgconn.PgConn) error { return nil })
	if err := l.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer l.Close(ctx)
	if _, err := l.Look(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.SetOwned(ctx, []int{1, 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Pool.Exec(ctx, "select setval($1::regclass, 1)", e.Table.Derived("relay_waiting")); err != nil {
		t.Fatal(err)
	}
	// enqueue commits a row of partition p and returns the first
	// notification the session receives within a moment, nil for none.
	enqueue := func(p int) *pgconn.Notification {
		t.Helper()
		if _, err := e.Pool.Exec(ctx, `insert into `+e.Table.Ident()+` (exchange, routing_key, payload, partition_key)
			select '', 'k', 'x', k::text from generate_series(1, 1000) k
			 where `+e.Table.Derived("partition")+`(k::text, 0, 12) = $1 limit 1`, p); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		n, err := l.conn.WaitForNotification(wctx)
		if errors.Is(err, context.DeadlineExceeded) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := enqueue(2); n != nil {
		t.Errorf("a row of partition 2, not owned, reached the session: %+v", *n)
	}
	if n := enqueue(1); n == nil || n.Channel != e.Table.PartitionChannel(1) || !strings.HasPrefix(n.Payload, "1:") {
		t.Errorf("a row of partition 1, owned, reached the session as %+v, want \"1:<xid>\" on %q", n, e.Table.PartitionChannel(1))
	}
	if err := l.SetOwned(ctx, []int{3}); err != nil {
		t.Fatal(err)
	}
	if n := enqueue(1); n != nil {
		t.Errorf("a row of partition 1, given up, reached the session: %+v", *n)
	}
	if n := enqueue(3); n == nil || n.Channel != e.Table.PartitionChannel(3) {
		t.Errorf("a row of partition 3, owned, reached the session as %+v", n)
	}
}
