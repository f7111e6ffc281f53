package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

const concurrentWriters = 32

// writers measures the rate at which writers commit, for each of
// writeShapes (32 one-row writers, then bulk transactions), for a while,
// several ways, one after the other: into a plain table of the
// outbox's shape (the reference, measured in turns with the outbox table
// before the relay runs and after it stopped: see pairedRate);
// into the real outbox table with no relay (what the trigger costs while
// no relay runs), with the relay running as its own process (idle at
// first, then busy: what writers pay while the relay publishes everything
// they write), and once the relay has stopped; into a table whose trigger
// sends a NOTIFY on every insert, with nobody listening (what the wake-up
// design avoids), and drained by the minimal loop (the floor: what a relay
// that publishes everything at once costs writers here); and into a
// trigger-less table drained by the minimal loop polling every
// floorPoll (publishing everything, with no NOTIFY to pay). While the
// relay runs, the CPU used by the broker and by the relay process is
// reported: on a small machine that share is taken from the writers
// whatever the wake-up does.
func (b *bench) writers(ctx context.Context, rep *report) error {
	for _, t := range []struct {
		name   string
		notify bool
	}{{"bench_plain", false}, {"bench_naive", true}, {loopTable, true}, {floorTable, false}} {
		if err := b.createLoopTable(ctx, t.name, t.notify); err != nil {
			return fmt.Errorf("writers: %w", err)
		}
	}
	for _, shape := range writeShapes {
		if err := b.writersShape(ctx, rep, shape); err != nil {
			return err
		}
	}
	return nil
}

// writersShape is the writers scenario for the transactions of shape.
func (b *bench) writersShape(ctx context.Context, rep *report, shape writeShape) error {
	// The tables nobody drains start empty for each shape.
	if _, err := b.db.Exec(ctx, "truncate bench_plain, bench_naive"); err != nil {
		return fmt.Errorf("writers: %w", err)
	}
	// The same table with no relay: what the trigger's check costs alone,
	// against the plain table in alternation. Its rows are then left for
	// the relay.
	alone, plainBefore, err := b.pairedRate(ctx, shape, b.table.Ident())
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
	broker := brokerPID(b.amqpPort())
	brokerBefore, _ := cpuSeconds(broker)
	relayBefore, _ := cpuSeconds(p.Pid())
	begin, sent := time.Now(), c.n.Load()
	real, err := b.commitRate(ctx, shape, b.table.Ident())
	took := time.Since(begin).Seconds()
	realSent := float64(c.n.Load()-sent) / took
	brokerAfter, _ := cpuSeconds(broker)
	relayAfter, _ := cpuSeconds(p.Pid())
	if serr := p.Stop(); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	stopped, plainAfter, err := b.pairedRate(ctx, shape, b.table.Ident())
	if err != nil {
		return err
	}
	naive, err := b.commitRate(ctx, shape, "bench_naive")
	if err != nil {
		return err
	}
	begin, sent = time.Now(), c.n.Load()
	loop, err := b.commitRateDrained(ctx, shape, loopTable, 0)
	if err != nil {
		return err
	}
	loopSent := float64(c.n.Load()-sent) / time.Since(begin).Seconds()
	floor, err := b.commitRateDrained(ctx, shape, floorTable, floorPoll)
	if err != nil {
		return err
	}
	plain := (plainBefore + plainAfter) / 2

	unit := "commits/s"
	if shape.rows > 1 {
		unit = "rows/s"
	}
	who := fmt.Sprintf("%d writers, %s", shape.writers, shape.name)
	ref := fmt.Sprintf("%.0f %s plain", plain, unit)
	row := func(what string, rate float64, target string, ok bool) {
		rep.add(who+", "+what, fmt.Sprintf("%.0f %s", rate, unit), ref,
			fmt.Sprintf("%.2f", rate/plain), target, ok)
	}
	rep.add(who+", plain insert, no trigger", fmt.Sprintf("%.0f %s", plain, unit),
		fmt.Sprintf("%.0f beside no relay yet, %.0f beside stopped", plainBefore, plainAfter), "", "", true)
	paired := func(what string, rate, plain float64) {
		rep.add(who+", "+what, fmt.Sprintf("%.0f %s", rate, unit), fmt.Sprintf("%.0f %s plain, alternated", plain, unit),
			fmt.Sprintf("%.2f", rate/plain), ">= 0.95", rate/plain >= 0.95)
	}
	paired("outbox table, no relay yet", alone, plainBefore)
	row("outbox table, relay draining", real, fmt.Sprintf(">= loop's %.2f", loop/plain), real >= loop)
	brokerCPU := "n/a (no local beam.smp)"
	if broker != 0 {
		brokerCPU = fmt.Sprintf("%.2f", (brokerAfter-brokerBefore)/took)
	}
	rep.add(fmt.Sprintf("  CPU meanwhile, of %d cores", runtime.NumCPU()),
		fmt.Sprintf("broker %s, relay %.2f", brokerCPU, (relayAfter-relayBefore)/took),
		"publishing what the writers write", "", "", true)
	// Who drains faster takes more of the cores from the writers.
	rep.add("  rows published meanwhile", fmt.Sprintf("relay %.0f/s", realSent),
		fmt.Sprintf("loop %.0f/s (its NOTIFY run below)", loopSent), "", "", true)
	paired("outbox table, relay stopped", stopped, plainAfter)
	row("NOTIFY in every commit, no listener", naive, "(what is avoided)", true)
	row("NOTIFY in every commit, minimal loop draining", loop, "(the floor)", true)
	row(fmt.Sprintf("no trigger, minimal loop polling every %s", floorPoll), floor, "(publishing everything)", true)
	return nil
}

// floorTable is a trigger-less table of the outbox's shape, drained by the
// minimal loop polling every floorPoll: what publishing everything costs
// writers on shared cores, with no NOTIFY to pay.
const (
	floorTable = "bench_floor"
	floorPoll  = time.Millisecond
)

// commitRateDrained is commitRate on table (unquoted) while a minimal loop
// drains it, woken by its trigger and, if poll > 0, every poll.
func (b *bench) commitRateDrained(ctx context.Context, shape writeShape, table string, poll time.Duration) (float64, error) {
	_, stop, err := b.startLoop(ctx, table, poll)
	if err != nil {
		return 0, err
	}
	rate, err := b.commitRate(ctx, shape, pgxIdent(table))
	if serr := stop(); err == nil {
		err = serr
	}
	return rate, err
}

// pairRounds is how many times pairedRate alternates between the two
// tables: the machine's pace drifts by 10-20% from one 10s measurement to
// the next, more than the 5% a target tells apart.
const pairRounds = 4

// pairedRate measures the writers of shape on table and on the plain table
// in turns, pairRounds each, for the configured time in all per table, and
// returns both rates.
func (b *bench) pairedRate(ctx context.Context, shape writeShape, table string) (rate, plain float64, err error) {
	slice := b.o.writersFor / pairRounds
	for i := range pairRounds {
		order := []string{table, "bench_plain"}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, tbl := range order {
			r, err := b.commitRateFor(ctx, shape, tbl, slice)
			if err != nil {
				return 0, 0, err
			}
			if tbl == table {
				rate += r / pairRounds
			} else {
				plain += r / pairRounds
			}
		}
	}
	return rate, plain, nil
}

// commitRate runs the writers of shape against table for the configured
// time and returns rows written per second.
func (b *bench) commitRate(ctx context.Context, shape writeShape, table string) (float64, error) {
	return b.commitRateFor(ctx, shape, table, b.o.writersFor)
}

// commitRateFor is commitRate for d.
func (b *bench) commitRateFor(ctx context.Context, shape writeShape, table string, d time.Duration) (float64, error) {
	pool, err := b.pool(ctx, shape.writers)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	// Warm the connections.
	var wg sync.WaitGroup
	for range shape.writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = pool.Exec(ctx, "select 1")
		}()
	}
	wg.Wait()

	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var rows atomic.Int64
	var firstErr atomic.Value
	begin := time.Now()
	for range shape.writers {
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
				if err := shape.write(ctx, b, conn, table); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				rows.Add(int64(shape.rows))
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, fmt.Errorf("writers on %s: %w", table, err)
	}
	return float64(rows.Load()) / time.Since(begin).Seconds(), nil
}
