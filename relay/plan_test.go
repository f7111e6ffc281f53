package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// TestClaimPlanSurvivesAnEmptyVacuum caches the claim's generic plan
// while the table is vacuumed empty (0 pages: the planner estimates no
// rows, and a sequential scan costs nothing), then fills the table with
// 20,000 keyed rows and runs the claim with that plan. It took over 30 s
// before the relay's sessions turned sequential scans off: a scan of the
// table, sorted, and a scan again for every row's key check. It happened
// in the benchmark whenever a burst drained and autovacuum ran before the
// next backlog. The plan must walk claim_idx and touch about as many pages
// as TestQueriesStayCheapBesideDeadAndDelayedRows allows.
func TestClaimPlanSurvivesAnEmptyVacuum(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
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
		// the custom ones, as it did in the benchmark; forced here so that
		// the test does not depend on the estimates, and failing fast.
		_, err := c.Exec(ctx, "set plan_cache_mode = force_generic_plan; set statement_timeout = 5000").ReadAll()
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	s := newStore(pool, e.Table, 10, func(int) time.Duration { return time.Hour })
	// An owner of three partitions of four, as relays sharing a table
	// claim: the plan has every part of the claim's filter.
	if _, err := schema.SetPartitions(ctx, testenv.Conn(t), e.Table, 4, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	pid, _ := lockSession(t, e.Table)
	s.SetPartitions(4, true)
	s.SetOwner(pid, []int{0, 1, 2})
	tbl := e.Table.Ident()
	if _, err := e.Pool.Exec(ctx, "vacuum "+tbl); err != nil {
		t.Fatal(err)
	}
	if c, err := s.Claim(ctx, 500); err != nil || len(c.rows) != 0 {
		t.Fatalf("claim of the empty table: %v", err)
	}
	if _, err := e.Pool.Exec(ctx, `insert into `+tbl+` (routing_key, payload, partition_key)
		select 'now', 'x', 'k' || (i % 1000) from generate_series(1, 20000) i`); err != nil {
		t.Fatal(err)
	}

	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var name string
	var generic int64
	if err := conn.QueryRow(ctx, `select name, generic_plans from pg_prepared_statements where statement = $1`,
		s.claimSQL).Scan(&name, &generic); err != nil {
		t.Fatal(err)
	}
	if generic == 0 {
		t.Fatal("the claim ran without a generic plan: the test measures nothing")
	}
	args := s.claimArgs(500, BatchBytesDefault, MaxMessageSizeDefault)
	params := make([]string, len(args))
	for i := range args {
		params[i] = fmt.Sprintf("$%d", i+1)
	}
	execute := "execute " + name + "(" + strings.Join(params, ", ") + ")"
	simple := []any{pgx.QueryExecModeSimpleProtocol} // EXECUTE's arguments inlined
	rows, err := conn.Query(ctx, "explain (analyze, costs off, timing off) "+execute, append(simple, args...)...)
	if err != nil {
		t.Fatalf("claim with the plan cached while empty: %v", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("claim with the plan cached while empty: %v", err)
	}
	text := strings.Join(lines, "\n")
	t.Logf("generic plan:\n%s", text)
	if strings.Contains(text, "Seq Scan on "+e.Table.Name+" ") || strings.Contains(text, "JIT") {
		t.Error("the claim scans the table or compiles its plan")
	}
	var js []byte
	if err := conn.QueryRow(ctx, "explain (analyze, buffers, format json) "+execute, append(simple, args...)...).Scan(&js); err != nil {
		t.Fatal(err)
	}
	var out []struct {
		Plan struct {
			ActualRows float64 `json:"Actual Rows"`
			Hit        int     `json:"Shared Hit Blocks"`
			Read       int     `json:"Shared Read Blocks"`
		}
	}
	if err := json.Unmarshal(js, &out); err != nil {
		t.Fatal(err)
	}
	if p := out[0].Plan; p.ActualRows != 500 || p.Hit+p.Read > 15*500 {
		t.Errorf("the claim took %v rows touching %d pages, want 500 rows and at most %d pages", p.ActualRows, p.Hit+p.Read, 15*500)
	}
}
