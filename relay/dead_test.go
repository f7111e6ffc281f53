package relay_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
)

// `dead retry` revives the rows it can and leaves dead, saying why, those
// a check of the table would refuse: rows parked by migration 004, and
// rows that break a check added since.
func TestRetryDeadSkipsRowsThatBreakChecks(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	dead := func(exchange, key string, partition *string, attempts int) int64 {
		t.Helper()
		var id int64
		if err := e.Pool.QueryRow(ctx, `insert into `+e.Table.Ident()+` (exchange, routing_key, partition_key, payload, attempts, dead_at)
			values ($1, $2, $3, 'x', $4, now()) returning id`, exchange, key, partition, attempts).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	str := func(s string) *string { return &s }
	long := strings.Repeat("x", 300)

	good := dead("ex", "k", str("pk"), 10)
	longKey := dead("ex", long, nil, 10)
	longBoth := dead(long, "k", str(strings.Repeat("p", 1025)), 10)
	// A check added later, without a comment and not validated: the row
	// breaks it. Another whose condition the row breaks now, but not once
	// revived (attempts reset): it is retried.
	forbidden := dead("ex", "forbidden.k", nil, 10)
	many := dead("ex", "k", nil, 60)
	e.Exec(t, `alter table {{t}} add constraint `+e.Table.Local("no_forbidden")+` check (dead_at is not null or routing_key not like 'forbidden%') not valid,
		add constraint `+e.Table.Local("few_attempts")+` check (attempts < 50) not valid`)
	e.Exec(t, `insert into {{t}} (routing_key, payload) values ('live', 'x')`) // not dead: not selected

	res, err := relay.RetryDead(ctx, e.Pool, e.Table, relay.DeadFilter{All: true})
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if want := []int64{good, many}; !slices.Equal(res.IDs, want) {
		t.Errorf("retried %v, want %v", res.IDs, want)
	}
	want := []relay.Skipped{
		{Check: e.Table.Name + "_exchange_size", Reason: "exchange longer than 255 bytes", IDs: []int64{longBoth}},
		{Check: e.Table.Name + "_no_forbidden", Reason: "breaks ((dead_at IS NOT NULL) OR (routing_key !~~ 'forbidden%'::text))", IDs: []int64{forbidden}},
		{Check: e.Table.Name + "_partkey_size", Reason: "partition_key longer than 1024 bytes", IDs: []int64{longBoth}},
		{Check: e.Table.Name + "_routing_key_size", Reason: "routing_key longer than 255 bytes", IDs: []int64{longKey}},
	}
	if !slices.EqualFunc(res.Skipped, want, func(a, b relay.Skipped) bool {
		return a.Check == b.Check && a.Reason == b.Reason && slices.Equal(a.IDs, b.IDs)
	}) {
		t.Errorf("skipped\n %+v\nwant\n %+v", res.Skipped, want)
	}
	var stillDead []int64
	if err := e.Pool.QueryRow(ctx, "select coalesce(array_agg(id order by id), '{}') from "+e.Table.Ident()+" where dead_at is not null").Scan(&stillDead); err != nil {
		t.Fatal(err)
	}
	if want := []int64{longKey, longBoth, forbidden}; !slices.Equal(stillDead, want) {
		t.Errorf("dead after retry: %v, want %v", stillDead, want)
	}

	// Narrowed to rows that all break a check: nothing to revive, no error.
	res, err = relay.RetryDead(ctx, e.Pool, e.Table, relay.DeadFilter{IDs: []int64{longKey}})
	if err != nil || len(res.IDs) != 0 || len(res.Skipped) != 1 || !slices.Equal(res.Skipped[0].IDs, []int64{longKey}) {
		t.Errorf("retry of %d: %+v, %v; want it skipped", longKey, res, err)
	}
	res, err = relay.RetryDead(ctx, e.Pool, e.Table, relay.DeadFilter{All: true, Exchange: &long, OlderThan: time.Microsecond})
	if err != nil || len(res.IDs) != 0 || len(res.Skipped) != 2 || !slices.Equal(res.Skipped[0].IDs, []int64{longBoth}) {
		t.Errorf("retry -all -exchange %.10s…: %+v, %v; want %d skipped", long, res, err, longBoth)
	}
	// Fixed, it is retried.
	e.Exec(t, `update {{t}} set routing_key = 'k' where id = $1`, longKey)
	res, err = relay.RetryDead(ctx, e.Pool, e.Table, relay.DeadFilter{IDs: []int64{longKey}})
	if err != nil || !slices.Equal(res.IDs, []int64{longKey}) || len(res.Skipped) != 0 {
		t.Errorf("retry of %d once fixed: %+v, %v; want it retried", longKey, res, err)
	}
}

// A dead row whose expiration ran out would be parked dead again at its
// next claim: `dead retry` leaves it dead and says why; a row with time
// left is revived.
func TestRetryDeadLeavesExpiredRows(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	dead := func(expiration string) int64 {
		t.Helper()
		var id int64
		if err := e.Pool.QueryRow(ctx, `insert into `+e.Table.Ident()+` (routing_key, payload, created_at, available_at, expiration, attempts, dead_at)
			values ('k', 'x', now() - interval '1 hour', now() - interval '1 hour', $1::interval, 10, now()) returning id`, expiration).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	expired, alive := dead("1 minute"), dead("1 day")
	res, err := relay.RetryDead(ctx, e.Pool, e.Table, relay.DeadFilter{All: true})
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if !slices.Equal(res.IDs, []int64{alive}) {
		t.Errorf("retried %v, want [%d]", res.IDs, alive)
	}
	if len(res.Skipped) != 1 || res.Skipped[0].Check != "expired" || !slices.Equal(res.Skipped[0].IDs, []int64{expired}) ||
		!strings.Contains(res.Skipped[0].Reason, "expiration ran out") {
		t.Errorf("skipped %+v, want %d as expired", res.Skipped, expired)
	}
}
