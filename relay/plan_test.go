package relay

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// The claim's plan must be the walk of claim_idx in id order whatever the
// planner believes of the table; two beliefs made it something else, in
// the benchmark, with the relay's sessions as they were:
//
//   - Vacuumed empty (0 pages): a sequential scan costs nothing, and the
//     generic plan cached then stays until the next ANALYZE. On 20,000 rows
//     it scanned the table, sorted it, and scanned it again for every
//     row's key check: one claim on the CPU until statement_timeout.
//   - Analyzed with a backlog: PostgreSQL cannot estimate
//     available_at = created_at and took a handful of rows to match, so
//     a bitmap scan of them and a sort looked cheaper than the walk. On
//     the writers scenario's million-row backlog each claim read and
//     sorted all of it: 2.4 s, against 4 ms.
//
// The relay's sessions turn sequential and bitmap scans off (see
// sessionSettings). Each case runs the claim with its generic plan and with
// a custom plan, on a session of its own. The second belief needs a large
// table to arise by itself; here the bitmap scan is made to look cheaper
// by ids out of physical order and random reads priced high ("index reads
// dear"), which fails the same way without the settings. Without them,
// "vacuumed empty" fails with its generic plan and "index reads dear" with
// both; the other cases guard plans that were right before (a custom plan
// is made for the table as it is; this small analyzed backlog did not mislead
// the planner).
func TestClaimPlanWalksTheIndexWhateverTheEstimates(t *testing.T) {
	t.Parallel()
	// 20,000 keyed rows, with distinct times and ids in physical order,
	// or not (then).
	fill := func(then string) string {
		return `insert into {{t}} (id, routing_key, payload, partition_key, created_at, available_at) overriding system value
		select i, 'now', 'x', 'k' || (i % 1000), c, c
		  from generate_series(1, 20000) i, lateral (select clock_timestamp() - (20000 - i) * interval '1 ms') t(c) ` + then
	}
	for _, tc := range []struct {
		name          string
		before, after string // statements around the first, empty, claims
		session       string // settings of the claim's session
	}{
		{"vacuumed empty", "vacuum {{t}}", fill(""), ""},
		{"analyzed backlog", fill("; analyze {{t}}"), "", ""},
		{"index reads dear", fill("order by random(); analyze {{t}}"), "", "set random_page_cost = 1000"},
	} {
		for _, mode := range []string{"force_generic_plan", "force_custom_plan"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				claimPlanCase(t, mode+"; "+tc.session, tc.before, tc.after)
			})
		}
	}
}

// claimPlanCase sets settings on the claim's session, runs before, claims
// as a deposed owner (nothing, but the plan is cached), runs after, and
// checks the plan of the claim of 500 rows of three partitions of four.
func claimPlanCase(t *testing.T, settings, before, after string) {
	e := testenv.New(t)
	ctx := context.Background()
	exec := func(sql string) {
		t.Helper()
		if sql != "" {
			e.Exec(t, sql)
		}
	}
	cfg, err := pgxpool.ParseConfig(e.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // one session: its cached plan is the one measured
	cfg.ConnConfig.AfterConnect = func(ctx context.Context, c *pgconn.PgConn) error {
		if err := applySessionSettings(ctx, c, nil); err != nil {
			return err
		}
		// The server picks the generic plan once it is not dearer than
		// the custom ones; each mode is forced here, and failing is fast.
		_, err := c.Exec(ctx, "set statement_timeout = 5000; set plan_cache_mode = "+settings).ReadAll()
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := schema.SetPartitions(ctx, testenv.Conn(t), e.Table, 4, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	s := newStore(pool, e.Table, 10, func(int) time.Duration { return time.Hour })
	s.SetPartitions(4, true)
	exec(before)
	// A deposed owner (its session gone) claims nothing, and caches the
	// plan all the same.
	s.SetOwner(1, []int{0, 1, 2})
	for range 6 { // past the five custom plans the server tries first
		c, err := s.Claim(ctx, 500)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.rows) != 0 {
			s.Settle(ctx, c, nil, 0)
			t.Fatalf("a deposed owner claimed %d rows", len(c.rows))
		}
	}
	exec(after)
	pid, _ := lockSession(t, e.Table)
	s.SetOwner(pid, []int{0, 1, 2})

	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var name string
	if err := conn.QueryRow(ctx, `select name from pg_prepared_statements where statement = $1`,
		s.claimSQL).Scan(&name); err != nil {
		t.Fatal(err)
	}
	args := s.claimArgs(500, BatchBytesDefault, MaxMessageSizeDefault)
	params := make([]string, len(args))
	for i := range args {
		params[i] = fmt.Sprintf("$%d", i+1)
	}
	execute := "execute " + name + "(" + strings.Join(params, ", ") + ")"
	args = append([]any{pgx.QueryExecModeSimpleProtocol}, args...) // EXECUTE's arguments inlined
	plan, err := ExplainText(ctx, conn, execute, args...)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	t.Logf("plan:\n%s", plan)
	walk := regexp.MustCompile(`-> +Index Scan using \S*claim_idx on ` + regexp.QuoteMeta(e.Table.Name) + ` o `)
	if !walk.MatchString(plan) || strings.Contains(plan, "JIT") {
		t.Error("the claim does not walk claim_idx, or compiles its plan")
	}
	got, pages, err := ExplainTotals(ctx, conn, execute, args...)
	if err != nil {
		t.Fatal(err)
	}
	if got != 500 || pages > 15*500 {
		t.Errorf("the claim took %v rows touching %d pages, want 500 rows and at most %d pages", got, pages, 15*500)
	}
}
