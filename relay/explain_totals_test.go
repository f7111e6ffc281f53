package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ExplainText runs sql on q under EXPLAIN (ANALYZE, BUFFERS, COSTS OFF,
// TIMING OFF) and returns the plan as text, for the plan tests to read
// and log. Exported for the tests of package relay_test.
func ExplainText(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string, args ...any) (string, error) {
	rows, err := q.Query(ctx, "explain (analyze, buffers, costs off, timing off) "+sql, args...)
	if err != nil {
		return "", fmt.Errorf("explain: %w", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", fmt.Errorf("explain: %w", err)
	}
	return strings.Join(lines, "\n"), nil
}

// ExplainTotals runs sql on q under EXPLAIN (ANALYZE, BUFFERS, FORMAT
// JSON) and returns the rows its top node returned and the pages it
// touched (shared buffers hit or read), the figures the plan tests bound.
// Exported for the tests of package relay_test.
func ExplainTotals(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) (rows float64, pages int, err error) {
	var js []byte
	if err := q.QueryRow(ctx, "explain (analyze, buffers, format json) "+sql, args...).Scan(&js); err != nil {
		return 0, 0, fmt.Errorf("explain: %w", err)
	}
	var out []struct {
		Plan struct {
			ActualRows float64 `json:"Actual Rows"`
			Hit        int     `json:"Shared Hit Blocks"`
			Read       int     `json:"Shared Read Blocks"`
		}
	}
	if err := json.Unmarshal(js, &out); err != nil {
		return 0, 0, fmt.Errorf("explain: unexpected output %q: %w", js, err)
	}
	if len(out) == 0 {
		return 0, 0, fmt.Errorf("explain: no plan in %q", js)
	}
	return out[0].Plan.ActualRows, out[0].Plan.Hit + out[0].Plan.Read, nil
}
