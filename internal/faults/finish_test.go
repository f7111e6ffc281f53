//go:build faults

package faults

import (
	"context"
	"slices"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// finish stops the load, waits for every committed message, checks that
// nothing was lost and that only expectDead rows remain (dead), and
// reports the summary line.
func (s *scenario) finish(expectDead int) summary {
	t := s.t
	t.Helper()
	s.prod.stop()
	committed, ambiguous, failed, lastErr := s.prod.snapshot()
	if len(committed) == 0 {
		t.Fatalf("the producer committed nothing (%d transactions failed, last: %v)", failed, lastErr)
	}
	if failed > 0 || len(ambiguous) > 0 {
		t.Logf("producer: %d transactions failed before commit, %d rows of failed commits (last error: %v)", failed, len(ambiguous), lastErr)
	}

	missing := func() []string {
		var out []string
		for id := range committed {
			if s.cons.received(id) == 0 {
				out = append(out, id)
			}
		}
		return out
	}
	var lost []string
	harness.Within(drainTimeout, func() bool {
		lost = missing()
		return len(lost) == 0
	})
	time.Sleep(lateLeeway) // late duplicates are counted too

	ctx := context.Background()
	var live, dead int
	harness.Within(5*time.Second, func() bool {
		live, dead = s.rows(ctx)
		return live == 0
	})

	got := s.cons.ids()
	var phantoms []string
	for id := range got {
		if _, ok := committed[id]; !ok && !ambiguous[id] {
			phantoms = append(phantoms, id)
		}
	}
	cs := s.cons.stats()
	sum := summary{
		scenario: s.name, committed: len(committed), lost: len(lost), duplicates: cs.duplicates, redelivered: cs.redelivered,
		reorders: cs.reorders, dead: dead, faults: s.faults, maxLatency: cs.maxLatency,
	}
	if len(s.recoveries) > 0 {
		sum.recover = slices.Max(s.recoveries)
	}
	t.Logf("recoveries: %v; the consumer connected %d times", roundAll(s.recoveries), s.cons.sessionCount())
	t.Log(sum.String())
	report(sum)

	if len(lost) > 0 {
		slices.Sort(lost)
		t.Errorf("LOST %d of %d committed messages (never delivered within %s after the load stopped)", len(lost), len(committed), drainTimeout)
		s.describeRows(lost[:min(len(lost), 10)])
	}
	if len(phantoms) > 0 {
		slices.Sort(phantoms)
		t.Errorf("%d delivered messages were never committed by the producer, e.g. %v", len(phantoms), phantoms[:min(len(phantoms), 5)])
	}
	if cs.unstamped > 0 && len(phantoms) == 0 {
		t.Errorf("%d deliveries lack the %s header", cs.unstamped, beganHeader)
	}
	if cs.reorders > 0 {
		// README, guarantee 4: "After a lost connection, unconfirmed rows
		// are published again: ... the first copy of each message arrives
		// in order."
		t.Errorf("%d messages arrived (first copy) after a later message of their partition key", cs.reorders)
	}
	if live != 0 {
		t.Errorf("%d live rows left in the table after every message arrived", live)
	}
	if dead != expectDead {
		t.Errorf("%d dead rows in the table, want %d", dead, expectDead)
		s.describeDead()
	}
	return sum
}

// describeRows logs what the table says about the given message ids.
func (s *scenario) describeRows(ids []string) {
	rows, err := s.env.Pool.Query(context.Background(), `select message_id::text, id, attempts, coalesce(last_error, ''), dead_at is not null, created_at
  from `+s.env.Table.Ident()+` where message_id::text = any($1)`, ids)
	if err != nil {
		s.t.Logf("describe rows: %v", err)
		return
	}
	defer rows.Close()
	found := map[string]bool{}
	for rows.Next() {
		var mid, lastErr string
		var id int64
		var attempts int
		var dead bool
		var created time.Time
		if err := rows.Scan(&mid, &id, &attempts, &lastErr, &dead, &created); err != nil {
			s.t.Logf("describe rows: %v", err)
			return
		}
		found[mid] = true
		s.t.Logf("  lost %s: still in table as id %d, attempts %d, dead %t, created %s, last_error %q", mid, id, attempts, dead, created.Format(time.RFC3339Nano), lastErr)
	}
	for _, id := range ids {
		if !found[id] {
			s.t.Logf("  lost %s: deleted from the table, never delivered", id)
		}
	}
}

// describeDead logs the dead rows.
func (s *scenario) describeDead() {
	rows, err := s.env.Pool.Query(context.Background(), `select id, exchange, attempts, coalesce(last_error, '') from `+
		s.env.Table.Ident()+` where dead_at is not null order by id limit 20`)
	if err != nil {
		s.t.Logf("describe dead rows: %v", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var ex, lastErr string
		var attempts int
		if err := rows.Scan(&id, &ex, &attempts, &lastErr); err == nil {
			s.t.Logf("  dead row %d: exchange %q, attempts %d, last_error %q", id, ex, attempts, lastErr)
		}
	}
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
