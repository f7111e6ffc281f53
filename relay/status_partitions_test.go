package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// sharedTable is a table of P = 4 with rows over many keys (some dead, some
// delayed) in every partition, two member relays owning partitions 0, 2 and
// 1, and a relay without a broker: partition 3 has rows and no owner.
type sharedTable struct {
	e          *testenv.Env
	a, b, idle int32
	// want is each partition's pending, available and dead rows, counted
	// row by row.
	want [4][3]int64
}

func newSharedTable(t *testing.T) *sharedTable {
	t.Helper()
	ctx := context.Background()
	s := &sharedTable{e: testenv.New(t)}
	tbl := s.e.Table
	if _, err := schema.SetPartitions(ctx, testenv.Conn(t), tbl, 4, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`insert into ` + tbl.Ident() + ` (exchange, routing_key, partition_key, payload, created_at, available_at)
			select 'ex', 'r', 'k' || (i % 20), 'x', now() - interval '1 minute', now() - interval '1 minute' from generate_series(1, 60) i`,
		`insert into ` + tbl.Ident() + ` (exchange, routing_key, payload, available_at) select 'ex', 'later', 'x', now() + interval '1 hour' from generate_series(1, 8)`,
		`update ` + tbl.Ident() + ` set dead_at = now(), attempts = 10 where partition_key in ('k1', 'k2')`,
	} {
		if _, err := s.e.Pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := s.e.Pool.Query(ctx, `select `+tbl.Derived("partition")+`(partition_key, id, 4), dead_at is null, available_at <= now() from `+tbl.Ident())
	if err != nil {
		t.Fatal(err)
	}
	var p int32
	var live, avail bool
	if _, err := pgx.ForEachRow(rows, []any{&p, &live, &avail}, func() error {
		switch {
		case !live:
			s.want[p][2]++
		case avail:
			s.want[p][0]++
			s.want[p][1]++
		default:
			s.want[p][0]++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for p, w := range s.want {
		if w[1] == 0 {
			t.Fatalf("partition %d has no available rows: %v", p, s.want)
		}
	}
	s.a = testenv.HoldRelayLocks(t, tbl, "relay-a@host-a amqp=10.0.0.1:5672", true, 0, 2)
	s.b = testenv.HoldRelayLocks(t, tbl, "relay-b@host-b amqp=10.0.0.2:5672", true, 1)
	s.idle = testenv.HoldRelayLocks(t, tbl, "relay-c@host-c", false)
	return s
}

// With several relays, status lists them with their partitions, and each
// partition with its owner and rows.
func TestStatusOfPartitionedTable(t *testing.T) {
	t.Parallel()
	s := newSharedTable(t)
	st, err := relay.ReadStatus(context.Background(), s.e.Pool, s.e.Table)
	if err != nil {
		t.Fatal(err)
	}
	if st.Partitions != 4 || len(st.ByPartition) != 4 {
		t.Fatalf("partitions = %d, %d entries, want 4", st.Partitions, len(st.ByPartition))
	}
	type relayWant struct {
		name, broker string
		member       bool
		owned        string
	}
	want := map[int32]relayWant{
		s.a:    {"relay-a@host-a", "10.0.0.1:5672", true, "[0 2]"},
		s.b:    {"relay-b@host-b", "10.0.0.2:5672", true, "[1]"},
		s.idle: {"relay-c@host-c", "", false, "[]"},
	}
	if len(st.Relays) != len(want) {
		t.Errorf("relays = %+v, want 3", st.Relays)
	}
	for i, r := range st.Relays {
		w, ok := want[r.PID]
		got := relayWant{r.Name, r.Broker, r.Member, fmt.Sprint(r.Owned)}
		if !ok || got != w {
			t.Errorf("relay %d = %+v, want %+v", r.PID, got, w)
		}
		if r.ClientAddr == "" || r.Since.IsZero() || time.Since(r.Since) > time.Minute {
			t.Errorf("relay %d: client %q, since %s", r.PID, r.ClientAddr, r.Since)
		}
		if i > 0 && st.Relays[i-1].PID >= r.PID {
			t.Errorf("relays not by pid: %+v", st.Relays)
		}
	}
	owners := []*int32{&s.a, &s.b, &s.a, nil}
	var total [3]int64
	for p, ps := range st.ByPartition {
		w := s.want[p]
		if ps.Partition != p || ps.Pending != w[0] || ps.Available != w[1] || ps.Dead != w[2] {
			t.Errorf("partition %d = %+v, want pending %d, available %d, dead %d", p, ps, w[0], w[1], w[2])
		}
		if ps.OldestPendingAgeSeconds < 55 || ps.OldestPendingAgeSeconds > 120 {
			t.Errorf("partition %d: oldest pending %vs, want about 60", p, ps.OldestPendingAgeSeconds)
		}
		switch {
		case owners[p] == nil && ps.Owner != nil:
			t.Errorf("partition %d: owner %d, want none", p, *ps.Owner)
		case owners[p] != nil && (ps.Owner == nil || *ps.Owner != *owners[p]):
			t.Errorf("partition %d: owner %v, want %d", p, ps.Owner, *owners[p])
		}
		for i := range total {
			total[i] += w[i]
		}
	}
	if st.Pending != total[0] || st.Available != total[1] || st.Dead != total[2] {
		t.Errorf("totals pending %d, available %d, dead %d; want %v", st.Pending, st.Available, st.Dead, total)
	}
	if len(st.Exchanges) != 1 || st.Exchanges[0].Pending != total[0] {
		t.Errorf("exchanges = %+v", st.Exchanges)
	}
	if st.Leader == nil || st.Leader.PID != s.a || st.Leader.ApplicationName != "relay-a@host-a amqp=10.0.0.1:5672" {
		t.Errorf("leader = %+v, want partition 0's owner, relay a (%d)", st.Leader, s.a)
	}
	js, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"table", "pending", "available", "dead", "oldest_pending_age_seconds", "leader", "exchanges",
		"partitions", "relays", "by_partition"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, js)
		}
	}
}

// A table before migration 007 is one partition, and its leader owns it.
func TestStatusBeforePartitions(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	e.MigrateTo(t, 6) // before 007, which records P
	ctx := context.Background()
	if _, err := e.Pool.Exec(ctx, `insert into `+e.Table.Ident()+` (routing_key, payload) values ('a', 'x'), ('b', 'y')`); err != nil {
		t.Fatal(err)
	}
	pid := testenv.HoldRelayLocks(t, e.Table, "old@host", false, 0)
	st, err := relay.ReadStatus(ctx, e.Pool, e.Table)
	if err != nil {
		t.Fatal(err)
	}
	if st.Partitions != 1 || len(st.ByPartition) != 1 || st.ByPartition[0].Pending != 2 || st.Pending != 2 {
		t.Errorf("status = %+v, want one partition with 2 rows", st)
	}
	if o := st.ByPartition[0].Owner; o == nil || *o != pid || st.Leader == nil || st.Leader.PID != pid {
		t.Errorf("partition 0's owner %v, leader %+v; want %d", o, st.Leader, pid)
	}
	if len(st.Relays) != 1 || fmt.Sprint(st.Relays[0].Owned) != "[0]" {
		t.Errorf("relays = %+v", st.Relays)
	}
}
