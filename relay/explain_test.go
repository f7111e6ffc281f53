package relay_test

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
)

// TestQueriesStayCheapBesideDeadAndDelayedRows puts 100,000 dead rows and
// 100,000 rows scheduled for later in front of a normal backlog, then runs
// every recurring query of the relay under EXPLAIN (ANALYZE, BUFFERS): none
// may scan the table, and the claim of a 500-row batch must touch a number
// of pages that follows the batch, not the 200,000 rows in front of it (the
// first version of the claim read and discarded all of them).
// `go test -v -run Explain ./relay` prints the plans.
func TestQueriesStayCheapBesideDeadAndDelayedRows(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	tbl := e.Table.Ident()
	for _, sql := range []string{
		`insert into ` + tbl + ` (routing_key, payload, dead_at, attempts) select 'dead', 'x', now(), 10 from generate_series(1, 100000)`,
		`insert into ` + tbl + ` (routing_key, payload, available_at) select 'later', 'x', now() + interval '1 day' from generate_series(1, 100000)`,
		`insert into ` + tbl + ` (routing_key, payload, partition_key) select 'now', 'x', 'k' || (i % 50) from generate_series(1, 2000) i`,
		`insert into ` + tbl + ` (routing_key, payload, available_at) select 'retry', 'x', now() - interval '1 second' from generate_series(1, 20)`,
		`analyze ` + tbl,
	} {
		if _, err := e.Pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range relay.Queries(e.Table, 500, 10) {
		t.Run(q.Name, func(t *testing.T) {
			tx, err := e.Pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			// Planned as on the relay's sessions; the rollback resets.
			if _, err := tx.Exec(ctx, relay.SessionSettingsSQL()); err != nil {
				t.Fatal(err)
			}
			plan, err := relay.ExplainText(ctx, tx, q.SQL, q.Args...)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s:\n%s", q.Name, plan)
			if strings.Contains(plan, "Seq Scan on outbox") {
				t.Errorf("%s scans the table", q.Name)
			}
			// A walk over the rows in front shows as rows read and
			// thrown away by a filter.
			removed := regexp.MustCompile(`Rows Removed by Filter: (\d+)`)
			for _, m := range removed.FindAllStringSubmatch(plan, -1) {
				if n, _ := strconv.Atoi(m[1]); n > 1000 {
					t.Errorf("%s reads and discards %d rows", q.Name, n)
				}
			}

			got, pages, err := relay.ExplainTotals(ctx, tx, q.SQL, q.Args...)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %v rows, %d pages", q.Name, got, pages)
			if q.Name == "claim" {
				if got != 500 {
					t.Errorf("claim took %v rows, want 500", got)
				}
				// About a dozen pages a row: the index probes, the row,
				// its lock. Walking the 200,000 rows in front costs more.
				if pages > 15*500 {
					t.Errorf("claim touched %d pages for 500 rows", pages)
				}
			}
		})
	}
}
