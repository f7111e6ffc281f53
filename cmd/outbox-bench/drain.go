package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// drain compares draining a backlog of rows with raw publishing of as many
// messages, two ways:
//
//   - broker alone: nobody consumes while the messages are published, so
//     the broker writes every persistent message to its queue before it
//     confirms it. This is the broker's raw publish-with-confirms rate, the
//     reference the drain targets. Raw publishing ends when every
//     message is confirmed; the drain when the relay has published and
//     deleted every row. Then the queue must hold all of them.
//   - live consumer: a consumer takes the messages as they come, as in
//     production; both end when the consumer has them all. The broker then
//     does much less per message, so on two cores PostgreSQL's share of
//     the CPU weighs more.
//
// Each round measures raw publishing, the relay and, for reference, the
// simplest honest relay loop (see minimalDrain) side by side, and the
// ratios are taken within the round: the broker's rate on this machine
// swings by a fifth from one run to the next.
func (b *bench) drain(ctx context.Context, rep *report) error {
	n := b.o.rows
	var alone, live drainRuns
	for round := 0; round < b.o.rounds; round++ {
		raw, err := timeIt(n, func() error { return b.rawPublish(ctx, n, 1000) })
		if err == nil {
			err = b.expectQueued(ctx, n)
		}
		if err != nil {
			return fmt.Errorf("raw: %w", err)
		}
		relayed, err := b.timeDrain(ctx, n, nil, harness.Name, b.relayDrain(ctx, n))
		if err == nil {
			err = b.expectQueued(ctx, n)
		}
		if err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		minimal, err := b.timeDrain(ctx, n, nil, loopAppName, b.minimalDrain(ctx))
		if err == nil {
			err = b.expectQueued(ctx, n)
		}
		if err != nil {
			return fmt.Errorf("minimal loop: %w", err)
		}
		alone.add(raw, relayed, minimal)

		c, err := b.consume(ctx, nil)
		if err != nil {
			return err
		}
		raw, err = timeIt(n, func() error {
			want := c.n.Load() + int64(n)
			if err := b.rawPublish(ctx, n, 1000); err != nil {
				return err
			}
			return c.waitFor(ctx, want, 5*time.Minute)
		})
		if err == nil {
			relayed, err = b.timeDrain(ctx, n, c, harness.Name, b.relayDrain(ctx, n))
		}
		if err == nil {
			minimal, err = b.timeDrain(ctx, n, c, loopAppName, b.minimalDrain(ctx))
		}
		c.close()
		if err != nil {
			return fmt.Errorf("live consumer: %w", err)
		}
		live.add(raw, relayed, minimal)
		fmt.Fprintf(b.o.stderr, "outbox-bench: drain round %d: broker alone: raw %.0f, relay %.0f, minimal loop %.0f msg/s; live consumer: raw %.0f, relay %.0f, minimal loop %.0f msg/s\n",
			round+1, alone.raw[round], alone.relay[round], alone.minimal[round], live.raw[round], live.relay[round], live.minimal[round])
	}
	for _, m := range []struct {
		what   string
		r      drainRuns
		target bool
	}{{"broker alone", alone, true}, {"live consumer", live, false}} {
		m.r.report(rep, n, b.o.rounds, m.what, m.target)
	}
	return nil
}

// drainRuns are the rates (rows or messages a second) and CPU costs
// (seconds per 1,000 rows) of the drain's rounds, one way.
type drainRuns struct {
	raw, relay, minimal  []float64
	relayCPU, minimalCPU []float64
}

func (d *drainRuns) add(raw float64, relayed, minimal drainRun) {
	d.raw = append(d.raw, raw)
	d.relay, d.relayCPU = append(d.relay, relayed.rate), append(d.relayCPU, relayed.cpu)
	d.minimal, d.minimalCPU = append(d.minimal, minimal.rate), append(d.minimalCPU, minimal.cpu)
}

// report adds the rounds' figures to rep; with target, the drain's
// targets apply.
func (d drainRuns) report(rep *report, n, rounds int, what string, target bool) {
	ratio, each := ratios(d.relay, d.raw)
	mratio, meach := ratios(d.minimal, d.raw)
	lratio, leach := ratios(d.relay, d.minimal)
	cratio, ceach := ratios(d.relayCPU, d.minimalCPU)
	rep.add(fmt.Sprintf("raw publish with confirms, window 1000, %s", what), fmt.Sprintf("%.0f msg/s", median(d.raw)),
		fmt.Sprintf("median of %d rounds", rounds), "", "", true)
	rawTarget := ""
	if target {
		rawTarget = ">= 0.90"
	}
	rep.add(fmt.Sprintf("drain %d-row backlog, %s", n, what), fmt.Sprintf("%.0f rows/s", median(d.relay)), "raw, the same round",
		fmt.Sprintf("%.2f (rounds: %s)", ratio, each), rawTarget, !target || ratio >= 0.90)
	rep.add(fmt.Sprintf("  minimal loop, %s", what), fmt.Sprintf("%.0f rows/s", median(d.minimal)), "raw, the same round",
		fmt.Sprintf("%.2f (rounds: %s)", mratio, meach), "", true)
	rep.add("  relay against the minimal loop", fmt.Sprintf("%.0f rows/s", median(d.relay)),
		fmt.Sprintf("loop %.0f rows/s", median(d.minimal)), fmt.Sprintf("%.2f (rounds: %s)", lratio, leach), ">= 0.95", lratio >= 0.95)
	rep.add("  CPU s per 1,000 rows (*)", fmt.Sprintf("relay %.3f", median(d.relayCPU)),
		fmt.Sprintf("loop %.3f", median(d.minimalCPU)), fmt.Sprintf("%.2f (rounds: %s)", cratio, ceach), "<= 1.2 x loop", cratio <= 1.2)
	if !target {
		rep.add("  (*) drain CPU: the bench process, where both run,", "plus their PostgreSQL backends;",
			"the consumer's share is in both", "", "", true)
	}
}

// ratios returns the median of num[i]/den[i] and each ratio, formatted.
func ratios(num, den []float64) (float64, string) {
	var rs []float64
	var each []string
	for i := range num {
		rs = append(rs, num[i]/den[i])
		each = append(each, fmt.Sprintf("%.2f", num[i]/den[i]))
	}
	return median(rs), strings.Join(each, " ")
}

// timeIt returns n divided by how long f took.
func timeIt(n int, f func() error) (float64, error) {
	begin := time.Now()
	if err := f(); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(begin).Seconds(), nil
}

// drainRun is one timed drain: rows a second, and CPU seconds per 1,000
// rows of this process and of the drainer's PostgreSQL backends.
type drainRun struct{ rate, cpu float64 }

// timeDrain fills the table with n rows and times drain; with a consumer c
// it ends when c has them all. The backends of the drainer are those whose
// application_name starts with prefix; drain calls published once it has
// published every row and before it closes its connections, which stops
// the CPU meter (the connections' last moments would be lost otherwise).
func (b *bench) timeDrain(ctx context.Context, n int, c *consumer, prefix string, drain func(published func()) error) (drainRun, error) {
	var run drainRun
	if err := b.fill(ctx, n); err != nil {
		return run, err
	}
	if _, err := b.db.Exec(ctx, "vacuum analyze "+b.table.Ident()); err != nil {
		return run, err
	}
	m, err := b.meterCPU(ctx, nil, prefix)
	if err != nil {
		return run, err
	}
	var use cpuUse
	var merr error
	stopped := false
	published := func() {
		if !stopped {
			stopped = true
			use, merr = m.finish(ctx)
		}
	}
	run.rate, err = timeIt(n, func() error {
		var want int64
		if c != nil {
			want = c.n.Load() + int64(n)
		}
		if err := drain(published); err != nil {
			return err
		}
		if c != nil {
			return c.waitFor(ctx, want, 5*time.Minute)
		}
		return nil
	})
	published()
	run.cpu = perK(use.bench+use.backends, n)
	return run, errors.Join(err, merr)
}

// relayDrain returns a drain that runs the relay until it has published
// and deleted n rows.
func (b *bench) relayDrain(ctx context.Context, n int) func(published func()) error {
	return func(published func()) error {
		stop, count, err := b.startRelayCounting(ctx)
		if err != nil {
			return err
		}
		// Gathering the metrics costs some CPU: poll gently.
		pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		if err := harness.Poll(pctx, 10*time.Millisecond, func() bool { return count() >= float64(n) }); err != nil {
			_ = stop()
			return fmt.Errorf("relay published %.0f of %d rows: %w", count(), n, err)
		}
		published()
		return stop()
	}
}

// expectQueued checks that the bench queue holds n messages, then empties it.
func (b *bench) expectQueued(ctx context.Context, n int) error {
	ch, err := b.amqp.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(b.queue, true, false, false, false, nil)
	if err != nil {
		return err
	}
	if q.Messages != n {
		return fmt.Errorf("queue holds %d messages, want %d", q.Messages, n)
	}
	_, err = ch.QueuePurge(b.queue, false)
	return err
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
