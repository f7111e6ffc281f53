package relay

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lmittmann/tint"
)

// Gauge refresh. Every relay, leader or standby, refreshes the table's
// gauges on a timer, in one statement whose cost is bounded whatever the
// backlog:
//
//   - lag: the first live row in id order that is available, one probe of
//     the claim index (it steps over rows that are delayed or backing off);
//   - pending and dead: counts through their partial indexes, stopping at
//     countCap rows; past that, pending is estimated from the span of live ids
//     (two index probes), dead reported as countCap;
//   - the NOTIFY queue's usage, a function call.
const (
	gaugeInterval = 10 * time.Second
	countCap      = 100_000
	// notifyQueueWarn is the NOTIFY queue usage (0-1) above which the relay
	// warns: when the queue is full, commits of notifying writers fail.
	notifyQueueWarn = 0.5
)

type gaugeQueries struct {
	gauges, pendingSpan string
}

func newGaugeQueries(table string) gaugeQueries {
	return gaugeQueries{
		gauges: `select
  coalesce(extract(epoch from now() - (
    select created_at from ` + table + ` where dead_at is null and available_at <= now() order by id limit 1)), 0)::float8,
  (select count(*) from (select 1 from ` + table + ` where dead_at is null limit ` + fmt.Sprint(countCap+1) + `) p),
  (select count(*) from (select 1 from ` + table + ` where dead_at is not null limit ` + fmt.Sprint(countCap) + `) d),
  pg_notification_queue_usage()`,
		pendingSpan: `select coalesce((select id from ` + table + ` where dead_at is null order by id desc limit 1)
  - (select id from ` + table + ` where dead_at is null order by id limit 1) + 1, 0)`,
	}
}

// refreshGauges refreshes the table's gauges every gaugeInterval until ctx
// is done.
func (r *Relay) refreshGauges(ctx context.Context, pool *pgxpool.Pool, q gaugeQueries) {
	t := time.NewTicker(gaugeInterval)
	defer t.Stop()
	failing, warned := false, false
	for {
		err := r.refreshOnce(ctx, pool, q, &warned)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			// Once per failure streak: the loop reports database trouble too.
			r.log.Warn("refresh gauges", tint.Err(err))
			failing = true
		case err == nil && failing:
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Relay) refreshOnce(ctx context.Context, pool *pgxpool.Pool, q gaugeQueries, warned *bool) error {
	ctx, cancel := context.WithTimeout(ctx, gaugeInterval)
	defer cancel()
	var lag, usage float64
	var pending, dead int64
	if err := pool.QueryRow(ctx, q.gauges).Scan(&lag, &pending, &dead, &usage); err != nil {
		return err
	}
	if pending > countCap {
		if err := pool.QueryRow(ctx, q.pendingSpan).Scan(&pending); err != nil {
			return fmt.Errorf("pending rows: %w", err)
		}
	}
	r.metrics.lag.Set(lag)
	r.metrics.pending.Set(float64(pending))
	r.metrics.dead.Set(float64(dead))
	r.metrics.notifyQueue.Set(usage)
	switch {
	case usage >= notifyQueueWarn && !*warned:
		r.log.Warn("NOTIFY queue filling up: a listening session is not reading; when it is full, writers' commits fail",
			slog.Float64("usage", usage))
		*warned = true
	case usage < notifyQueueWarn/2 && *warned:
		r.log.Info("NOTIFY queue drained", slog.Float64("usage", usage))
		*warned = false
	}
	return nil
}
