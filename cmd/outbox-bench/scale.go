package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// scaleKeys is how many distinct partition_keys the scale scenario's
// backlog spreads over, evenly: enough that every partition gets its
// share of the rows.
const scaleKeys = 10_000

// scale measures how relay processes, each capped to a fraction of a core
// by a cgroup of its own, scale with their number N. Each round measures,
// side by side:
//
//   - one capped relay draining an R-row backlog from a table of its own;
//   - the machine's limit for N capped relays: N relays on N tables, R/N
//     rows each, sharing nothing but the servers;
//   - N capped relays sharing one table of P partitions
//     (schema.DefaultPartitions), draining R rows.
//
// Every table has P partitions, as `outbox-relay migrate` creates them. The
// relays start, and own their share of the partitions (scraped from their
// /metrics), before the backlog commits in one transaction; a drain ends
// when the queue holds every row, which the bench reads from the broker
// so as not to spend the capped relays' CPU on scrapes. A relay's share is
// its outbox_published_total over R; the shared table's rate against the
// limit is scaled down when a relay took more than 1/N of the rows
// (shareAdjusted), since a drain that leans on one relay would not scale.
func (b *bench) scale(ctx context.Context, rep *report) error {
	n, rows := b.o.scaleRelays, b.o.scaleRows
	if n < 1 || rows < n {
		return fmt.Errorf("want at least 1 relay and a row per relay, got %d relays and %d rows", n, rows)
	}
	capped := fmt.Sprintf("capped at %g core", b.o.scaleCPU)
	caps, err := newCPUCaps(n, b.o.scaleCPU)
	if err != nil {
		fmt.Fprintf(b.o.stderr, "outbox-bench: scale: cannot cap the relays with the cgroup v1 cpu controller: %v: the scenario runs UNCAPPED\n", err)
		capped, caps = "UNCAPPED (no cpu cgroup)", nil
	}
	defer func() {
		if caps != nil {
			if err := caps.remove(); err != nil {
				fmt.Fprintf(b.o.stderr, "outbox-bench: scale: %v\n", err)
			}
		}
	}()
	shared := b.table
	apart := make([]schema.Table, n)
	for i := range apart {
		apart[i] = schema.Table{Schema: b.table.Schema, Name: fmt.Sprintf("%s_%d", b.table.Name, i+1)}
		if _, err := schema.Migrate(ctx, b.db, apart[i]); err != nil {
			return err
		}
	}
	for _, t := range append([]schema.Table{shared}, apart...) {
		if _, err := schema.SetPartitions(ctx, b.db, t, schema.DefaultPartitions, 10*time.Second); err != nil {
			return err
		}
	}
	var s scaleRuns
	for round := range b.o.scaleRounds {
		one, err := b.scaleDrain(ctx, caps, apart[:1], apart[:1], rows)
		if err != nil {
			return fmt.Errorf("1 relay: %w", err)
		}
		limit, err := b.scaleDrain(ctx, caps, apart, apart, rows)
		if err != nil {
			return fmt.Errorf("%d relays, a table each: %w", n, err)
		}
		together, err := b.scaleDrain(ctx, caps, slices.Repeat([]schema.Table{shared}, n), []schema.Table{shared}, rows)
		if err != nil {
			return fmt.Errorf("%d relays sharing a table: %w", n, err)
		}
		s.add(one, limit, together, rows)
		fmt.Fprintf(b.o.stderr, "outbox-bench: scale round %d: 1 relay %.0f, %d relays on a table each %.0f, sharing one table %.0f rows/s; shares %s\n",
			round+1, one.rate, n, limit.rate, together.rate, formatShares(s.shares[round]))
	}
	s.report(rep, n, rows, b.o.scaleRounds, capped)
	return nil
}

// scaleRun is one timed drain of the scale scenario.
type scaleRun struct {
	rate      float64   // rows a second, from the backlog's commit until the queue holds every row
	published []float64 // each relay's outbox_published_total
	relayCPU  []float64 // each relay process's CPU seconds
	backends  float64   // the relays' PostgreSQL backends' CPU seconds; NaN if unknown
}

// scaleDrain starts a relay on each of relayTables, relay i in cgroup i of
// caps (nil: uncapped), waits until they own their partitions and sleep on
// LISTEN, commits rows spread evenly over the backlog tables in one
// transaction and times the drain; then it checks that the queue holds
// every row, empties it and stops the relays.
func (b *bench) scaleDrain(ctx context.Context, caps *cpuCaps, relayTables, backlog []schema.Table, rows int) (run scaleRun, err error) {
	for _, t := range backlog {
		if _, err := b.db.Exec(ctx, "vacuum analyze "+t.Ident()); err != nil {
			return run, err
		}
	}
	var procs []*harness.Process
	defer func() { err = errors.Join(err, stopRelays(procs)) }()
	for i, t := range relayTables {
		addr, err := freeAddr()
		if err != nil {
			return run, err
		}
		p, err := b.relayOn(t, addr).Start(ctx)
		if err != nil {
			return run, err
		}
		procs = append(procs, p)
		if caps != nil {
			if err := caps.add(i, p.Pid()); err != nil {
				return run, err
			}
		}
	}
	if err := waitBalanced(ctx, procs, relayTables); err != nil {
		return run, err
	}
	for _, t := range backlog {
		if err := b.waitIdleOn(ctx, t); err != nil {
			return run, err
		}
	}

	tx, err := b.stageBacklog(ctx, backlog, rows)
	if err != nil {
		return run, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	cpuBefore := make([]float64, len(procs))
	for i, p := range procs {
		if cpuBefore[i], err = cpuSeconds(p.Pid()); err != nil {
			return run, err
		}
	}
	m, err := b.meterCPU(ctx, nil, harness.Name)
	if err != nil {
		return run, err
	}
	run.rate, err = timeIt(rows, func() error {
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("commit backlog: %w", err)
		}
		return b.waitQueued(ctx, rows)
	})
	if err == nil {
		err = b.waitEmpty(ctx, backlog)
	}
	use, merr := m.finish(ctx)
	if err = errors.Join(err, merr); err != nil {
		return run, err
	}
	run.backends = use.backends
	for i, p := range procs {
		after, err := cpuSeconds(p.Pid())
		if err != nil {
			return run, err
		}
		run.relayCPU = append(run.relayCPU, after-cpuBefore[i])
	}
	if run.published, err = publishedBy(ctx, procs, rows); err != nil {
		return run, err
	}
	return run, b.expectQueued(ctx, rows)
}

// stageBacklog inserts rows into the backlog tables, split evenly, in a
// transaction it leaves open: the caller commits it, or rolls it back.
func (b *bench) stageBacklog(ctx context.Context, backlog []schema.Table, rows int) (pgx.Tx, error) {
	tx, err := b.db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	for i, t := range backlog {
		n := rows / len(backlog)
		if i < rows%len(backlog) {
			n++
		}
		if err := b.copyBacklog(ctx, tx, t, n, scaleKeys); err != nil {
			return nil, errors.Join(err, tx.Rollback(context.WithoutCancel(ctx)))
		}
	}
	return tx, nil
}

// waitQueued waits until the bench queue holds n messages: the broker has
// every row, confirmed or about to be.
func (b *bench) waitQueued(ctx context.Context, n int) error {
	ch, err := b.amqp.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var got int
	var qerr error
	err = harness.Poll(wctx, 20*time.Millisecond, func() bool {
		q, err := ch.QueueDeclarePassive(b.queue, true, false, false, false, nil)
		got, qerr = q.Messages, err
		return qerr != nil || got >= n
	})
	if err = errors.Join(qerr, err); err != nil {
		return fmt.Errorf("queue holds %d of %d messages: %w", got, n, err)
	}
	return nil
}

// waitEmpty waits until the tables hold no row: the relays have settled
// every row they published.
func (b *bench) waitEmpty(ctx context.Context, tables []schema.Table) error {
	var parts []string
	for _, t := range tables {
		parts = append(parts, "not exists (select from "+t.Ident()+")")
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var qerr error
	err := harness.Poll(wctx, 20*time.Millisecond, func() bool {
		var empty bool
		qerr = b.db.QueryRow(wctx, "select "+strings.Join(parts, " and ")).Scan(&empty)
		return qerr != nil || empty
	})
	if err = errors.Join(qerr, err); err != nil {
		return fmt.Errorf("relays left rows in the table: %w", err)
	}
	return nil
}

// waitBalanced waits until the relays, procs[i] on tables[i], own every
// partition of their tables, each its share: ⌊P/N⌋, one more for P mod N
// of them.
func waitBalanced(ctx context.Context, procs []*harness.Process, tables []schema.Table) error {
	byTable := map[string][]int{}
	for i, t := range tables {
		byTable[t.String()] = append(byTable[t.String()], i)
	}
	owned := make([]int, len(procs))
	balanced := func() bool {
		for i, p := range procs {
			v, ok := p.Metric("outbox_partitions_owned")
			if !ok {
				return false
			}
			owned[i] = int(v)
		}
		for _, relays := range byTable {
			var got []int
			for _, i := range relays {
				got = append(got, owned[i])
			}
			slices.Sort(got)
			slices.Reverse(got)
			if !slices.Equal(got, relay.Shares(schema.DefaultPartitions, len(relays))) {
				return false
			}
		}
		return true
	}
	// Gently: scrapes cost the capped relays CPU.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := harness.Poll(wctx, 100*time.Millisecond, balanced); err != nil {
		return fmt.Errorf("relays own %v partitions: %w", owned, err)
	}
	return nil
}

// publishedBy returns each relay's outbox_published_total once they add
// up to rows.
func publishedBy(ctx context.Context, procs []*harness.Process, rows int) ([]float64, error) {
	got := make([]float64, len(procs))
	var sum float64
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := harness.Poll(wctx, 50*time.Millisecond, func() bool {
		sum = 0
		for i, p := range procs {
			got[i], _ = p.Metric("outbox_published_total")
			sum += got[i]
		}
		return sum >= float64(rows)
	})
	if err != nil {
		return nil, fmt.Errorf("relays published %.0f of %d rows: %w", sum, rows, err)
	}
	return got, nil
}

// stopRelays stops the relays side by side.
func stopRelays(procs []*harness.Process) error {
	for _, p := range procs {
		_ = p.Signal(syscall.SIGTERM)
	}
	var errs []error
	for _, p := range procs {
		errs = append(errs, p.Stop())
	}
	return errors.Join(errs...)
}

// freeAddr returns a local address free for a relay's /metrics.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
