package relay_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// setPartitions records p as the test table's number of partitions.
func (b *testBundle) setPartitions(t *testing.T, p int) {
	t.Helper()
	if _, err := schema.SetPartitions(context.Background(), testenv.Conn(t), b.env.Table, p, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// sharing is relays started on one table, each with its own registry.
type sharing struct {
	regs  []*prometheus.Registry
	stops []func() error
}

func (b *testBundle) startRelays(t *testing.T, n int) *sharing {
	t.Helper()
	s := &sharing{}
	for i := range n {
		reg := prometheus.NewRegistry()
		cfg := b.config(t)
		cfg.Name = fmt.Sprintf("%s-%d", b.env.Name, i)
		cfg.Registerer = reg
		s.regs = append(s.regs, reg)
		s.stops = append(s.stops, start(t, cfg))
	}
	return s
}

// waitOwned waits until the running relays own want partitions, in any
// order.
func (s *sharing) waitOwned(t *testing.T, within time.Duration, want ...int) {
	t.Helper()
	var got []int
	testenv.WaitFor(t, within, fmt.Sprintf("relays to own %v partitions", want), func() bool {
		got = got[:0]
		for i, reg := range s.regs {
			if s.stops[i] != nil {
				got = append(got, int(value(gather(t, reg)["outbox_partitions_owned"])))
			}
		}
		return fmt.Sprint(slices.Sorted(slices.Values(got))) == fmt.Sprint(slices.Sorted(slices.Values(want)))
	})
}

// keyedWriters writes perKey rows for each of keys keys, one writer per
// group of keys (so each key's rows commit in id order), and returns each
// message's row id and key.
func (b *testBundle) keyedWriters(t *testing.T, prefix string, writers, keys, perKey int) (rowOf map[string]int64, keyOf map[string]string) {
	t.Helper()
	rowOf, keyOf = map[string]int64{}, map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perKey {
				for k := w; k < keys; k += writers {
					key := fmt.Sprintf("%s-%d", prefix, k)
					var id int64
					var mid string
					err := b.env.Pool.QueryRow(context.Background(), `insert into `+b.env.Table.Ident()+`
						(exchange, routing_key, partition_key, payload) values ($1, 'seq', $2, $3)
						returning id, message_id::text`, b.exchange, key, fmt.Sprint(i)).Scan(&id, &mid)
					if err != nil {
						t.Errorf("insert: %v", err)
						return
					}
					mu.Lock()
					rowOf[mid], keyOf[mid] = id, key
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return rowOf, keyOf
}

// receiveInOrder receives n messages and checks that each key's rows
// arrived in id order.
func (b *testBundle) receiveInOrder(t *testing.T, n int, rowOf map[string]int64, keyOf map[string]string) {
	t.Helper()
	last := map[string]int64{}
	for _, d := range testenv.Receive(t, b.recv, n, 60*time.Second) {
		k, id := keyOf[d.MessageId], rowOf[d.MessageId]
		if k == "" {
			t.Fatalf("unknown message %s", d.MessageId)
		}
		if id <= last[k] {
			t.Errorf("key %s: row %d arrived after row %d", k, id, last[k])
		}
		last[k] = id
	}
}

// Three relays share a table of 12 partitions, 4 each, and every one of
// them publishes; keys stay in order. When one stops, the other two take
// its partitions over within 2s.
func TestRelaysShareTable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.setPartitions(t, 12)
	s := b.startRelays(t, 3)
	s.waitOwned(t, 10*time.Second, 4, 4, 4)

	rowOf, keyOf := b.keyedWriters(t, "a", 6, 300, 8)
	b.receiveInOrder(t, len(rowOf), rowOf, keyOf)
	for i, reg := range s.regs {
		if n := value(gather(t, reg)["outbox_published_total"]); n < float64(len(rowOf))/10 {
			t.Errorf("relay %d published %v of %d rows", i, n, len(rowOf))
		}
	}

	if err := s.stops[0](); err != nil {
		t.Fatal(err)
	}
	s.stops[0] = nil
	begin := time.Now()
	s.waitOwned(t, 5*time.Second, 6, 6)
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("the stopped relay's partitions were owned again after %s, want under 2s", d)
	}
	rowOf, keyOf = b.keyedWriters(t, "b", 4, 100, 5)
	b.receiveInOrder(t, len(rowOf), rowOf, keyOf)
}

// A relay told another number of partitions than the table's refuses to
// start, naming both.
func TestRelayRefusesPartitionsMismatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.setPartitions(t, 12)
	cfg := b.config(t)
	cfg.Partitions = 6
	r, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = r.Run(ctx)
	var mismatch *relay.PartitionsMismatchError
	if !errors.As(err, &mismatch) || !strings.Contains(err.Error(), "OUTBOX_PARTITIONS=6") || !strings.Contains(err.Error(), "has 12") {
		t.Fatalf("Run: %v, want a mismatch naming 6 and 12", err)
	}
}

// Relays that follow the table take the new number of partitions when
// migrate changes it under them, while rows flow: nothing lost, no key
// out of order.
func TestRelaysFollowPartitionsChange(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.setPartitions(t, 4)
	s := b.startRelays(t, 2)
	s.waitOwned(t, 10*time.Second, 2, 2)
	var rowOf map[string]int64
	var keyOf map[string]string
	done := make(chan struct{})
	go func() {
		defer close(done)
		rowOf, keyOf = b.keyedWriters(t, "c", 4, 80, 10)
	}()
	time.Sleep(100 * time.Millisecond)
	b.setPartitions(t, 6)
	<-done
	b.receiveInOrder(t, len(rowOf), rowOf, keyOf)
	s.waitOwned(t, 10*time.Second, 3, 3)
}

// keyIn returns a partition key that maps to partition p of P.
func (b *testBundle) keyIn(t *testing.T, p, partitions int, prefix string) string {
	t.Helper()
	for i := 0; ; i++ {
		k := fmt.Sprintf("%s-%d", prefix, i)
		var got int
		if err := b.env.Pool.QueryRow(context.Background(), "select "+b.env.Table.Derived("partition")+"($1, 0, $2)", k, partitions).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got == p {
			return k
		}
	}
}

// owner returns the backend pid holding partition p's lock, 0 for none.
func (b *testBundle) owner(t *testing.T, p int) int32 {
	t.Helper()
	key := uint64(b.env.Table.PartitionLockKey("leader", p))
	var pid int32
	err := b.env.Pool.QueryRow(context.Background(), `select coalesce((select pid from pg_locks where locktype = 'advisory' and granted
	   and objsubid = 1 and classid = $1::bigint::oid and objid = $2::bigint::oid limit 1), 0)`, int64(key>>32), int64(key&0xffffffff)).Scan(&pid)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// A relay busy with a backlog of its own partitions does not leave the
// others asleep without a NOTIFY: rows of another relay's partition,
// written one by one meanwhile, arrive at once, though the relays poll
// only once a minute.
func TestRelaysBusyOneLeavesOthersAwake(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.setPartitions(t, 2)
	for i := range 2 {
		cfg := b.config(t)
		cfg.Name = fmt.Sprintf("%s-%d", b.env.Name, i)
		cfg.PollInterval = time.Minute
		start(t, cfg)
	}
	testenv.WaitFor(t, 10*time.Second, "two relays to own a partition each", func() bool {
		a, c := b.owner(t, 0), b.owner(t, 1)
		return a != 0 && c != 0 && a != c
	})
	b.env.WaitRelayIdle(t)
	busy, calm := b.keyIn(t, 0, 2, "busy"), b.keyIn(t, 1, 2, "calm")
	if _, err := b.env.Pool.Exec(context.Background(), `insert into `+b.env.Table.Ident()+` (exchange, routing_key, partition_key, payload)
		select $1, 'busy', $2, 'x' from generate_series(1, 20000)`, b.exchange, busy); err != nil {
		t.Fatal(err)
	}
	var slowest time.Duration
	for range 10 {
		time.Sleep(50 * time.Millisecond)
		ids := insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "calm", partition: &calm, payload: []byte("c")})
		committed := time.Now()
		deadline := time.After(5 * time.Second)
	wait:
		for {
			select {
			case d := <-b.recv:
				if d.MessageId == ids[0] {
					slowest = max(slowest, time.Since(committed))
					break wait
				}
			case <-deadline:
				t.Fatalf("a row of the calm partition waited over 5s while the other relay drained its backlog")
			}
		}
	}
	t.Logf("slowest row of the calm partition: %s", slowest.Round(time.Millisecond))
	// A relay that finds another writer's transaction open (the burst's)
	// stays awake and looks again within a second: loaded machines add to it.
	if slowest > 3*time.Second {
		t.Errorf("a row of the calm partition took %s, want well under the poll interval", slowest)
	}
}

// At the largest P, a relay that joins two others gets its share within
// 5s, and every partition is owned throughout.
func TestRelaysRebalanceAtMaxPartitions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.setPartitions(t, schema.MaxPartitions)
	s := b.startRelays(t, 2)
	s.waitOwned(t, 20*time.Second, 128, 128)
	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.Name, cfg.Registerer = b.env.Name+"-joiner", reg
	begin := time.Now()
	s.regs = append(s.regs, reg)
	s.stops = append(s.stops, start(t, cfg))
	s.waitOwned(t, 20*time.Second, 86, 85, 85)
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("a joiner at P=%d got its share after %s, want within 5s", schema.MaxPartitions, d.Round(time.Millisecond))
	} else {
		t.Logf("balanced %s after the joiner started", d.Round(time.Millisecond))
	}
}
