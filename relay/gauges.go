package relay

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lmittmann/tint"

	"github.com/outbox-relay/outbox-relay/schema"
)

// Gauge refresh. Every relay, leader or standby, refreshes the table's
// gauges on a timer, in one statement whose cost is bounded whatever the
// backlog (each count walks one partial index in its own order, which keeps
// the planner off a table scan, and stops at countCap):
//
//   - lag: the oldest of the first row of the claim index and the due rows
//     of the delayed index (see the migration);
//   - pending and dead: counts through their partial indexes, stopping at
//     countCap rows each; past that, the rows available since they were
//     written are estimated from the span of their ids (two index probes),
//     and delayed and dead rows are reported as countCap;
//   - the NOTIFY queue's usage, a function call;
//   - the table's P, as the loop last looked it up (before its first
//     look, two small reads: see schema.ReadPartitions);
//   - the lag of the partitions the relay owns (see ownedLag).
const (
	gaugeInterval = 10 * time.Second
	countCap      = 100_000
	// notifyQueueWarn is the NOTIFY queue usage (0-1) above which the relay
	// warns: when the queue is full, commits of notifying writers fail.
	notifyQueueWarn = 0.5
)

type gaugeQueries struct {
	gauges, pendingSpan, stall string
	// stallOwned is stall narrowed to the partitions listed in $4 of P
	// $3, and ownedLag the lag of those ($2 of P $1); both only for a table
	// that records P.
	stallOwned, ownedLag string
	leaderKey            int64
	table                schema.Table
}

func newGaugeQueries(t schema.Table) gaugeQueries {
	table := t.Ident()
	limit := func(n int) string { return " limit " + fmt.Sprint(n) }
	owned := ownedFilter(t, "o", "$1", "$2")
	return gaugeQueries{
		gauges: `select
  coalesce(extract(epoch from now() - least(
    (select created_at from ` + table + ` where dead_at is null and available_at = created_at order by id limit 1),
    (select min(created_at) from (select created_at from ` + table + `
       where dead_at is null and available_at <> created_at and available_at <= now() order by available_at` + limit(countCap) + `) d))), 0)::float8,
  (select count(*) from (select 1 from ` + table + ` where dead_at is null and available_at = created_at order by id` + limit(countCap+1) + `) p),
  (select count(*) from (select 1 from ` + table + ` where dead_at is null and available_at <> created_at order by available_at` + limit(countCap) + `) d),
  (select count(*) from (select 1 from ` + table + ` where dead_at is not null order by id` + limit(countCap) + `) d),
  pg_notification_queue_usage()`,
		pendingSpan: `select coalesce((select id from ` + table + ` where dead_at is null and available_at = created_at order by id desc limit 1)
  - (select id from ` + table + ` where dead_at is null and available_at = created_at order by id limit 1) + 1, 0)`,
		stall:      stallQuery(table, ""),
		stallOwned: stallQuery(table, ownedFilter(t, "o", "$3", "$4")),
		ownedLag: `select coalesce(extract(epoch from now() - least(
    (select created_at from ` + table + ` o where dead_at is null and available_at = created_at` + owned + ` order by id limit 1),
    (select min(created_at) from (select created_at from ` + table + ` o
       where dead_at is null and available_at <> created_at and available_at <= now()` + owned + `
       order by available_at` + limit(countCap) + `) d))), 0)::float8`,
		leaderKey: t.LockKey("leader"),
		table:     t,
	}
}

// idleRefreshGap is the least time between two refreshes of the gauges
// when the relay goes idle.
const idleRefreshGap = time.Second

// refreshGauges refreshes the table's gauges every gaugeInterval, and soon
// after a signal on idle, until ctx is done. The leader signals when it
// runs out of rows, so that a backlog it drained leaves the gauges then and
// not up to gaugeInterval later (the lag read from the metrics stayed at
// 8 s for 9 s after the table was empty); at most once per idleRefreshGap.
//
// A refresh that fails leaves the gauges at the values of the last one
// that succeeded; outbox_gauges_refreshed_timestamp_seconds says when that
// was, and an alert watches it.
//
// After each refresh it checks that a leader with rows waiting claims them
// (see checkStall); prog gives the partitions the relay owns, and its
// LISTEN session.
func (r *Relay) refreshGauges(ctx context.Context, pool *pgxpool.Pool, q gaugeQueries, idle <-chan struct{},
	prog *progress) {
	t := time.NewTicker(gaugeInterval)
	defer t.Stop()
	failing, warned, stallWarned := false, false, false
	for {
		o := prog.owned.Load()
		lag, err := r.refreshOnce(ctx, pool, q, o, int(prog.partitions.Load()), &warned)
		if err == nil {
			err = r.checkStall(ctx, pool, q, prog.leaderPID.Load, prog, o, lag, &stallWarned)
		}
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			// Once per failure streak: the loop reports database trouble too.
			r.log.Warn("refresh gauges", tint.Err(err))
			failing = true
		case err == nil && failing:
			failing = false
		}
		last := time.Now()
		var soon <-chan time.Time
	wait:
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				break wait
			case <-soon:
				break wait
			case <-idle:
				if soon == nil {
					soon = time.After(time.Until(last.Add(idleRefreshGap)))
				}
			}
		}
	}
}

// refreshOnce refreshes the gauges once, o being the partitions the relay
// owns (nil: none, or the loop did not say) and partitions the table's P
// (0: the loop has not looked yet). It returns the lag of the rows
// the relay may claim: those of o when it owns fewer than the table's,
// else the table's.
func (r *Relay) refreshOnce(ctx context.Context, pool *pgxpool.Pool, q gaugeQueries, o *ownership, partitions int, warned *bool) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, gaugeInterval)
	defer cancel()
	var lag, usage float64
	var pending, delayed, dead int64
	if err := pool.QueryRow(ctx, q.gauges).Scan(&lag, &pending, &delayed, &dead, &usage); err != nil {
		return 0, withHint(err)
	}
	if pending > countCap {
		if err := pool.QueryRow(ctx, q.pendingSpan).Scan(&pending); err != nil {
			return 0, fmt.Errorf("pending rows: %w", withHint(err))
		}
	}
	if partitions == 0 {
		var err error
		if partitions, _, err = schema.ReadPartitions(ctx, pool, q.table); err != nil {
			return 0, withHint(err)
		}
	}
	ownedLag, err := r.ownedLag(ctx, pool, q, o, lag)
	if err != nil {
		return 0, err
	}
	pending += delayed
	r.metrics.lag.Set(lag)
	r.metrics.pending.Set(float64(pending))
	r.metrics.dead.Set(float64(dead))
	r.metrics.notifyQueue.Set(usage)
	r.metrics.partitions.Set(float64(partitions))
	r.metrics.ownedLag.Set(ownedLag)
	r.metrics.gaugesRefreshed.SetToCurrentTime()
	switch {
	case usage >= notifyQueueWarn && !*warned:
		r.log.Warn("NOTIFY queue filling up: a listening session is not reading; when it is full, writers' commits fail",
			slog.Float64("usage", usage))
		*warned = true
	case usage < notifyQueueWarn/2 && *warned:
		r.log.Info("NOTIFY queue drained", slog.Float64("usage", usage))
		*warned = false
	}
	if o == nil {
		return lag, nil
	}
	return ownedLag, nil
}

// ownedLag returns the age of the oldest available pending row of the
// partitions o the relay owns: 0 when it owns none, the table's lag when
// it owns them all. Like the claim, it walks claim_idx in id order past
// the rows of other partitions.
func (r *Relay) ownedLag(ctx context.Context, pool *pgxpool.Pool, q gaugeQueries, o *ownership, lag float64) (float64, error) {
	switch {
	case o == nil:
		return 0, nil
	case o.all():
		return lag, nil
	}
	var owned float64
	if err := pool.QueryRow(ctx, q.ownedLag, o.partitions, int32s(o.owned)).Scan(&owned); err != nil {
		return 0, fmt.Errorf("lag of the partitions owned: %w", withHint(err))
	}
	return owned, nil
}

// int32s converts partition numbers for an integer[] parameter.
func int32s(ps []int) []int32 {
	out := make([]int32, len(ps))
	for i, p := range ps {
		out[i] = int32(p)
	}
	return out
}
