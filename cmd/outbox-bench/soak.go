package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/outbox-relay/outbox-relay/relay"
)

// soak writes at the steady rate for a long while and reports, per minute,
// the p99 latency and the claim query's execution time, to show whether
// either drifts as dead tuples build up.
func (b *bench) soak(ctx context.Context, rep *report) error {
	var first time.Duration
	_, rows, err := b.runSteady(ctx, b.o.rate, b.o.soakFor, func(minute int, lat []time.Duration) error {
		claim, err := b.claimTime(ctx)
		if err != nil {
			return err
		}
		p99 := quantile(lat, 0.99)
		if minute == 1 {
			first = p99
		}
		rep.add(fmt.Sprintf("soak minute %d", minute), fmt.Sprintf("p99 %s", ms(p99)),
			fmt.Sprintf("claim query %.2fms", claim), "", "no upward drift", p99 <= max(2*first, 50*time.Millisecond))
		return nil
	})
	if err != nil {
		return err
	}
	rep.add("soak", fmt.Sprintf("%d rows", rows), "all received", "", "", true)
	return nil
}

// claimTime runs the relay's claim statements (the promotion of due rows
// and the claim) under EXPLAIN ANALYZE with the relay's session settings,
// in a transaction it rolls back, and returns their execution time in ms.
func (b *bench) claimTime(ctx context.Context) (float64, error) {
	tx, err := b.db.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	// Planned as on the relay's sessions; the rollback resets.
	if _, err := tx.Exec(ctx, relay.SessionSettingsSQL()); err != nil {
		return 0, err
	}
	var total float64
	for _, q := range relay.Queries(b.table, 500, 10) {
		if q.Name != "claim" && q.Name != "promote due rows" {
			continue
		}
		var plan []byte
		if err := tx.QueryRow(ctx, "explain (analyze, format json) "+q.SQL, q.Args...).Scan(&plan); err != nil {
			return 0, fmt.Errorf("explain %s: %w", q.Name, err)
		}
		var out []struct {
			ExecutionTime float64 `json:"Execution Time"`
		}
		if err := json.Unmarshal(plan, &out); err != nil || len(out) == 0 {
			return 0, fmt.Errorf("explain %s: %v", q.Name, err)
		}
		total += out[0].ExecutionTime
	}
	return total, nil
}
