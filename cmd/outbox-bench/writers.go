package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

const concurrentWriters = 32

// writers measures the commit rate of 32 concurrent one-row transactions
// for a while, several ways, one after the other: into a plain table of the
// outbox's shape (the reference, measured first and last, and averaged),
// into the real outbox table with no relay (what the trigger costs), with
// the relay running as its own process (idle at first, then busy: what
// writers pay while the relay publishes everything they write), and into a
// table whose trigger sends a NOTIFY on every insert (what the wake-up
// design avoids). While the relay runs, the CPU used by the broker and by
// the relay process is reported: on a small machine that share is taken
// from the writers whatever the wake-up does.
func (b *bench) writers(ctx context.Context, rep *report) error {
	for _, sql := range []string{
		`create table bench_plain (like ` + b.table.Ident() + ` including all)`,
		`create table bench_naive (like ` + b.table.Ident() + ` including all)`,
		`create function bench_naive_notify() returns trigger language plpgsql as $$
begin perform pg_notify('bench_naive', ''); return null; end $$`,
		`create trigger bench_naive_notify after insert on bench_naive for each statement execute function bench_naive_notify()`,
	} {
		if _, err := b.db.Exec(ctx, sql); err != nil {
			return fmt.Errorf("writers: %w", err)
		}
	}
	plainBefore, err := b.commitRate(ctx, "bench_plain")
	if err != nil {
		return err
	}

	// The same table with no relay: what the trigger's check costs alone.
	// Its rows are then left for the relay.
	alone, err := b.commitRate(ctx, b.table.Ident())
	if err != nil {
		return err
	}

	c, err := b.consume(ctx, nil)
	if err != nil {
		return err
	}
	defer c.close()
	p, err := b.startRelayProcess(ctx)
	if err != nil {
		return err
	}
	if err := b.waitIdle(ctx); err != nil {
		_ = p.Stop()
		return err
	}
	broker := brokerPID()
	brokerBefore, _ := cpuSeconds(broker)
	relayBefore, _ := cpuSeconds(p.Pid())
	begin := time.Now()
	real, err := b.commitRate(ctx, b.table.Ident())
	took := time.Since(begin).Seconds()
	brokerAfter, _ := cpuSeconds(broker)
	relayAfter, _ := cpuSeconds(p.Pid())
	if serr := p.Stop(); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	naive, err := b.commitRate(ctx, "bench_naive")
	if err != nil {
		return err
	}
	plainAfter, err := b.commitRate(ctx, "bench_plain")
	if err != nil {
		return err
	}
	plain := (plainBefore + plainAfter) / 2

	ref := fmt.Sprintf("%.0f commits/s plain", plain)
	rep.add(fmt.Sprintf("%d writers, plain insert, no trigger", concurrentWriters), fmt.Sprintf("%.0f commits/s", plain),
		fmt.Sprintf("%.0f before, %.0f after", plainBefore, plainAfter), "", "", true)
	rep.add(fmt.Sprintf("%d writers, outbox table, no relay", concurrentWriters), fmt.Sprintf("%.0f commits/s", alone), ref,
		fmt.Sprintf("%.2f", alone/plain), "", true)
	rep.add(fmt.Sprintf("%d writers, outbox table, relay running", concurrentWriters), fmt.Sprintf("%.0f commits/s", real), ref,
		fmt.Sprintf("%.2f", real/plain), ">= 0.90", real/plain >= 0.90)
	brokerCPU := "n/a (no local beam.smp)"
	if broker != 0 {
		brokerCPU = fmt.Sprintf("%.2f", (brokerAfter-brokerBefore)/took)
	}
	rep.add(fmt.Sprintf("  CPU meanwhile, of %d cores", runtime.NumCPU()),
		fmt.Sprintf("broker %s, relay %.2f", brokerCPU, (relayAfter-relayBefore)/took),
		"publishing what the writers write", "", "", true)
	rep.add(fmt.Sprintf("%d writers, NOTIFY in every commit", concurrentWriters), fmt.Sprintf("%.0f commits/s", naive), ref,
		fmt.Sprintf("%.2f", naive/plain), "(what is avoided)", true)
	return nil
}

// commitRate runs the writers against table for the configured time and
// returns commits per second.
func (b *bench) commitRate(ctx context.Context, table string) (float64, error) {
	pool, err := b.pool(ctx, concurrentWriters)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	sql := "insert into " + table + " (routing_key, payload) values ($1, $2)"
	// Warm the connections and their prepared statements.
	var wg sync.WaitGroup
	for range concurrentWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = pool.Exec(ctx, "select 1")
		}()
	}
	wg.Wait()

	wctx, cancel := context.WithTimeout(ctx, b.o.writersFor)
	defer cancel()
	var commits atomic.Int64
	var firstErr atomic.Value
	begin := time.Now()
	for range concurrentWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pool.Acquire(ctx)
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
				return
			}
			defer conn.Release()
			for wctx.Err() == nil {
				if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeCacheStatement, b.queue, b.payload); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				commits.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, fmt.Errorf("writers on %s: %w", table, err)
	}
	return float64(commits.Load()) / time.Since(begin).Seconds(), nil
}
