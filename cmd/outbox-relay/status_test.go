package main

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// status with two relays sharing a table of four partitions: both relays
// with their partitions, each partition's owner and rows, and the
// partition nobody owns although rows wait in it.
func TestStatusWithSeveralRelays(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	if _, err := schema.SetPartitions(ctx, testenv.Conn(t), e.Table, 4, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Pool.Exec(ctx, `insert into `+e.Table.Ident()+` (exchange, routing_key, partition_key, payload, created_at, available_at)
		select 'ex', 'r', 'k' || (i % 20), 'x', now() - interval '1 minute', now() - interval '1 minute' from generate_series(1, 60) i`); err != nil {
		t.Fatal(err)
	}
	var want [4]int64
	for p := range want {
		if err := e.Pool.QueryRow(ctx, `select count(*) from `+e.Table.Ident()+` where `+e.Table.Derived("partition")+`(partition_key, id, 4) = $1`, p).Scan(&want[p]); err != nil {
			t.Fatal(err)
		}
		if want[p] == 0 {
			t.Fatalf("no rows in partition %d", p)
		}
	}
	a := testenv.HoldRelayLocks(t, e.Table, "relay-a@host-a amqp=10.0.0.1:5672", true, 0, 2)
	b := testenv.HoldRelayLocks(t, e.Table, "relay-b@host-b amqp=10.0.0.2:5672", true, 1)
	env := baseEnv(e)

	out, stderr, code := runBin(t, env, "status")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	t.Logf("status:\n%s", out)
	lines := []string{
		`(?m)^partitions +4, 1 without owner \(1 of them with pending rows`,
		fmt.Sprintf(`(?m)^relay-a@host-a +%d +10\.0\.0\.1:5672 +\S+ +\S+ +yes +0,2$`, a),
		fmt.Sprintf(`(?m)^relay-b@host-b +%d +10\.0\.0\.2:5672 +\S+ +\S+ +yes +1$`, b),
	}
	owners := []string{fmt.Sprintf(`relay-a@host-a \(pid %d\)`, a), fmt.Sprintf(`relay-b@host-b \(pid %d\)`, b),
		fmt.Sprintf(`relay-a@host-a \(pid %d\)`, a), `none`}
	for p, o := range owners {
		lines = append(lines, fmt.Sprintf(`(?m)^%d +%s +%d +%d +0 +1m`, p, o, want[p], want[p]))
	}
	for _, l := range lines {
		if !regexp.MustCompile(l).MatchString(out) {
			t.Errorf("status lacks a line matching %s", l)
		}
	}
	if strings.Contains(out, "\nleader") {
		t.Errorf("status shows a single leader for a table of 4 partitions")
	}

	out, stderr, code = runBin(t, env, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status -o json: exit %d: %s", code, stderr)
	}
	var st struct {
		Partitions int `json:"partitions"`
		Leader     *struct {
			PID int32 `json:"pid"`
		} `json:"leader"`
		Relays []struct {
			PID    int32  `json:"pid"`
			Name   string `json:"name"`
			Broker string `json:"broker"`
			Member bool   `json:"member"`
			Owned  []int  `json:"partitions_owned"`
		} `json:"relays"`
		ByPartition []struct {
			Partition int     `json:"partition"`
			Owner     *int32  `json:"owner_pid"`
			Pending   int64   `json:"pending"`
			Oldest    float64 `json:"oldest_pending_age_seconds"`
		} `json:"by_partition"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if st.Partitions != 4 || len(st.Relays) != 2 || len(st.ByPartition) != 4 || st.Leader == nil || st.Leader.PID != a {
		t.Fatalf("status -o json = %s", out)
	}
	if r := st.Relays[0]; r.PID != min(a, b) || !r.Member || r.Broker == "" {
		t.Errorf("first relay = %+v", r)
	}
	for _, r := range st.Relays {
		if wantOwned := map[int32]string{a: "[0 2]", b: "[1]"}[r.PID]; fmt.Sprint(r.Owned) != wantOwned {
			t.Errorf("relay %s owns %v, want %s", r.Name, r.Owned, wantOwned)
		}
	}
	wantOwner := []int32{a, b, a, 0}
	for p, ps := range st.ByPartition {
		got := int32(0)
		if ps.Owner != nil {
			got = *ps.Owner
		}
		if ps.Partition != p || got != wantOwner[p] || ps.Pending != want[p] || ps.Oldest < 55 {
			t.Errorf("partition %d = %+v (owner %d), want owner %d, %d pending a minute old", p, ps, got, wantOwner[p], want[p])
		}
	}
}
