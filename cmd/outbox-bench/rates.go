package main

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/harness"
)

func pgxIdent(name string) string { return pgx.Identifier{name}.Sanitize() }

// loopTable is the minimal loop's table in the rates and writers
// scenarios: the outbox's shape, with a statement trigger that notifies on
// every commit.
const loopTable = "bench_notify"

// createLoopTable creates a table of the outbox's shape named table and,
// if notify, a statement trigger that calls pg_notify on the channel of
// the table's name at every insert.
func (b *bench) createLoopTable(ctx context.Context, table string, notify bool) error {
	name := pgxIdent(table)
	sqls := []string{`create table ` + name + ` (like ` + b.table.Ident() + ` including all)`}
	if notify {
		fn := pgxIdent(table + "_notify")
		sqls = append(sqls,
			`create function `+fn+`() returns trigger language plpgsql as $$
begin perform pg_notify(tg_table_name, ''); return null; end $$`,
			`create trigger `+fn+` after insert on `+name+` for each statement execute function `+fn+`()`)
	}
	for _, sql := range sqls {
		if _, err := b.db.Exec(ctx, sql); err != nil {
			return fmt.Errorf("create %s: %w", table, err)
		}
	}
	return nil
}

// rateStep is one steady rate, run through the relay or the minimal loop.
type rateStep struct {
	lat  []time.Duration // sorted
	rows int
	took time.Duration // from the first write to the last receipt
	cpu  cpuUse
	qps  float64 // transactions a second on the bench database, the writers' left out
}

func (s rateStep) latency() string {
	return fmt.Sprintf("p50 %s p95 %s p99 %s max %s", ms(quantile(s.lat, 0.5)), ms(quantile(s.lat, 0.95)),
		ms(quantile(s.lat, 0.99)), ms(s.lat[len(s.lat)-1]))
}

// rateWriters is how many writers write rate rows a second: 8, and more
// at high rates, where one-row commits of 8 could not keep the pace.
func rateWriters(rate int) int { return min(32, max(steadyWriters, rate/150)) }

// rates writes steady rates of one-row transactions, each through the relay
// (its own process) and then through the minimal loop woken by a NOTIFY
// from every commit, and compares commit → receipt latency, CPU per
// message and queries a second at each rate.
func (b *bench) rates(ctx context.Context, rep *report) error {
	if err := b.createLoopTable(ctx, loopTable, true); err != nil {
		return err
	}
	for _, rate := range b.o.rates {
		d := max(b.o.rateFor, time.Duration(float64(b.o.rateEvents)/float64(rate)*float64(time.Second)))
		load := steadyLoad{table: b.table.Ident(), rate: rate, writers: rateWriters(rate), d: d}
		relayed, err := b.runRate(ctx, load, false)
		if err != nil {
			return fmt.Errorf("%d/s through the relay: %w", rate, err)
		}
		load.table = pgxIdent(loopTable)
		loop, err := b.runRate(ctx, load, true)
		if err != nil {
			return fmt.Errorf("%d/s through the minimal loop: %w", rate, err)
		}
		fmt.Fprintf(b.o.stderr, "outbox-bench: %d/s: relay %s; minimal loop %s\n", rate, relayed.latency(), loop.latency())
		reportRate(rep, load, b.o.rateRelays, relayed, loop)
		rep.curve = append(rep.curve, ratePoint{
			relayRate: float64(relayed.rows) / load.d.Seconds(), loopRate: float64(loop.rows) / load.d.Seconds(),
			relay: [2]time.Duration{quantile(relayed.lat, 0.5), quantile(relayed.lat, 0.99)},
			loop:  [2]time.Duration{quantile(loop.lat, 0.5), quantile(loop.lat, 0.99)}})
	}
	return nil
}

func reportRate(rep *report, load steadyLoad, relays int, relayed, loop rateStep) {
	rate := load.rate
	who := ""
	if relays > 1 {
		who = fmt.Sprintf(", %d relays sharing the table", relays)
	}
	p99, lp99 := quantile(relayed.lat, 0.99), quantile(loop.lat, 0.99)
	bound, target := 50*time.Millisecond, "keeps up, p99 <= 50ms"
	if rate <= 1000 {
		bound = max(3*time.Millisecond, lp99*3/2)
		target = fmt.Sprintf("p99 <= max(3ms, 1.5 x loop) = %s", ms(bound))
	}
	rep.add(fmt.Sprintf("rate %d/s for %s, %d writers%s: latency", rate, load.d, load.writers, who), "relay "+relayed.latency(),
		"loop "+loop.latency(), fmt.Sprintf("p99 %.2f", float64(p99)/float64(max(lp99, 1))), target, p99 <= bound)

	relayCPU := perK(relayed.cpu.proc+relayed.cpu.backends, relayed.rows)
	loopCPU := perK(loop.cpu.proc+loop.cpu.backends, loop.rows)
	cpuTarget, cpuOK := "(fixed costs dominate)", true
	if rate >= 1000 {
		cpuTarget, cpuOK = "<= 1.2 x loop", relayCPU <= 1.2*loopCPU
	}
	ratio := "n/a"
	if !math.IsNaN(relayCPU) && !math.IsNaN(loopCPU) && loopCPU > 0 {
		ratio = fmt.Sprintf("%.2f", relayCPU/loopCPU)
	}
	rep.add("  CPU s per 1,000 msgs", fmt.Sprintf("relay %.3f = process %.3f + backends %.3f", relayCPU,
		perK(relayed.cpu.proc, relayed.rows), perK(relayed.cpu.backends, relayed.rows)),
		fmt.Sprintf("loop %.3f = process %.3f + backend %.3f", loopCPU, perK(loop.cpu.proc, loop.rows), perK(loop.cpu.backends, loop.rows)),
		ratio, cpuTarget, cpuOK)
	// On 2 cores, one-row commits, the relay, the broker and a consumer
	// saturate the machine near 1,000-1,300 rows/s: a higher rate is not
	// reached, and the figures above are those of that ceiling.
	written := float64(relayed.rows) / load.d.Seconds()
	rep.add("  queries/s; rows/s written", fmt.Sprintf("relay %.0f/s; %.0f/s", relayed.qps, written),
		fmt.Sprintf("loop %.0f/s; %.0f/s", loop.qps, float64(loop.rows)/load.d.Seconds()), "",
		fmt.Sprintf("writers reach >= 0.9 x %d/s", rate), written >= 0.9*float64(rate))
}

// runRate writes the load through the relay (a process of its own) or
// through the minimal loop (a goroutine of the bench, on loopTable), and
// measures it.
func (b *bench) runRate(ctx context.Context, load steadyLoad, viaLoop bool) (s rateStep, err error) {
	lat := newLatencies()
	c, err := b.consume(ctx, lat.receive)
	if err != nil {
		return s, err
	}
	defer c.close()
	var procs []int
	prefix := loopAppName
	var stop func() error
	if viaLoop {
		var proc int
		proc, stop, err = b.startLoop(ctx, loopTable, 0)
		procs = []int{proc}
	} else {
		procs, stop, err = b.startRelaysIdle(ctx, b.o.rateRelays)
		prefix = harness.Name
	}
	if stop != nil {
		defer func() {
			if serr := stop(); err == nil {
				err = serr
			}
		}()
	}
	if err != nil {
		return s, err
	}
	before, err := b.quietXacts(ctx, prefix)
	if err != nil {
		return s, err
	}
	m, err := b.meterCPU(ctx, procs, prefix)
	if err != nil {
		return s, err
	}
	begin := time.Now()
	s.lat, s.rows, err = b.steadyWrites(ctx, load, lat, c, nil)
	s.took = time.Since(begin)
	if s.cpu, err = finishMeter(ctx, m, err); err != nil {
		return s, err
	}
	after, err := b.quietXacts(ctx, prefix)
	if err != nil {
		return s, err
	}
	if len(s.lat) == 0 {
		return s, fmt.Errorf("no row written")
	}
	s.qps = float64(after-before-int64(s.rows)) / s.took.Seconds()
	return s, nil
}

// finishMeter stops m, whatever err is, and returns err or m's.
func finishMeter(ctx context.Context, m *cpuMeter, err error) (cpuUse, error) {
	u, ferr := m.finish(ctx)
	if err != nil {
		return u, err
	}
	return u, ferr
}

// parseRates reads a comma-separated list of rows a second.
func parseRates(s string) ([]int, error) {
	var rates []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		r, err := strconv.Atoi(f)
		if err != nil || r <= 0 {
			return nil, fmt.Errorf("rate %q: not a positive number of rows a second", f)
		}
		rates = append(rates, r)
	}
	return rates, nil
}
