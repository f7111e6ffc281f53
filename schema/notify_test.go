package schema_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// While a relay sleeps (the flag at 1), a transaction notifies the
// partition of each of its first rows once, on the partition's channel
// with the writer's transaction id (migration 012), and after 16 rows one
// empty payload on the table's
// channel, which wakes every relay; then nothing more, however many rows
// and statements follow. A row in a savepoint rolled back leaves no trace:
// its partition is notified again by the next row of it. At P = 1 the first
// row notifies, on the table's channel, and the others pay nothing.
func TestTriggerNotifiesAFewTimesPerTransaction(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		p    int
		sql  []string // one transaction
		keys []string // whose partitions are notified; nil: checked apart
	}{
		{name: "one row", p: 12, sql: []string{ins("a", 1)}, keys: []string{"a"}},
		{name: "three rows of one key", p: 12, sql: []string{ins("a", 3)}, keys: []string{"a"}},
		{name: "1,000 rows in 1,000 statements", p: 12, sql: repeat(ins("", 1), 1000)},
		{name: "a savepoint rolled back", p: 12,
			sql:  []string{"savepoint s", ins("a", 1), "rollback to savepoint s", ins("b", 1), ins("a", 1)},
			keys: []string{"a", "b"}},
		{name: "P = 1, 1,000 rows in one statement", p: 1, sql: []string{ins("a", 1000)}, keys: []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			e := testenv.New(t)
			if tc.p != 1 {
				if _, err := schema.SetPartitions(ctx, testenv.Conn(t), e.Table, tc.p, time.Second); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := e.Pool.Exec(ctx, "select setval($1::regclass, 1)", e.Table.Derived("relay_waiting")); err != nil {
				t.Fatal(err)
			}
			listener := testenv.Conn(t)
			channels := []string{e.Table.Channel()}
			for p := range tc.p {
				channels = append(channels, e.Table.PartitionChannel(p))
			}
			for _, c := range channels {
				if _, err := listener.Exec(ctx, "listen "+pgx.Identifier{c}.Sanitize()); err != nil {
					t.Fatal(err)
				}
			}
			var writer string
			err := pgx.BeginFunc(ctx, e.Pool, func(tx pgx.Tx) error {
				if err := tx.QueryRow(ctx, "select pg_current_xact_id()::text").Scan(&writer); err != nil {
					return err
				}
				for _, sql := range tc.sql {
					if _, err := tx.Exec(ctx, e.SQL(sql)); err != nil {
						return fmt.Errorf("%s: %w", sql, err)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for {
				wctx, cancel := context.WithTimeout(ctx, notifyLeeway)
				n, err := listener.WaitForNotification(wctx)
				cancel()
				if errors.Is(err, context.DeadlineExceeded) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				part, xid, _ := strings.Cut(n.Payload, ":")
				want := e.Table.Channel()
				if p, err := strconv.Atoi(part); err == nil {
					if tc.p > 1 {
						want = e.Table.PartitionChannel(p)
					}
					if xid != writer {
						t.Errorf("payload %q names transaction %q, want the writer's, %s", n.Payload, xid, writer)
					}
				}
				if n.Channel != want {
					t.Errorf("payload %q came on channel %q, want %q", n.Payload, n.Channel, want)
				}
				got = append(got, part)
			}
			slices.Sort(got)
			if tc.keys == nil { // rows without a key: 16 partitions at most, then ""
				if len(got) < 2 || len(got) > 17 || got[0] != "" {
					t.Errorf("payloads %q, want \"\" and up to 16 partitions", got)
				}
				return
			}
			var want []string
			for _, k := range tc.keys {
				var p int
				if err := e.Pool.QueryRow(ctx, "select "+e.Table.Derived("partition")+"($1, 0, $2)", k, tc.p).Scan(&p); err != nil {
					t.Fatal(err)
				}
				if s := fmt.Sprint(p); !slices.Contains(want, s) {
					want = append(want, s)
				}
			}
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("payloads %q, want %q (the partitions of %q)", got, want, tc.keys)
			}
		})
	}
}

// ins is an insert of n rows of key (none if "") into {{t}}.
func ins(key string, n int) string {
	k := "null"
	if key != "" {
		k = "'" + key + "'"
	}
	return fmt.Sprintf("insert into {{t}} (routing_key, payload, partition_key) select 'k', 'x', %s from generate_series(1, %d)", k, n)
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}
