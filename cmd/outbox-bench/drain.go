package main

import (
	"context"
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
//     reference of the performance issue. Raw publishing ends when every
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
	type rates struct{ raw, relay, minimal []float64 }
	var alone, live rates
	for round := 0; round < b.o.rounds; round++ {
		raw, err := timeIt(n, func() error { return b.rawPublish(ctx, n, 1000) })
		if err == nil {
			err = b.expectQueued(ctx, n)
		}
		if err != nil {
			return fmt.Errorf("raw: %w", err)
		}
		relayed, err := b.timeDrain(ctx, n, nil, b.relayDrain(ctx, n))
		if err == nil {
			err = b.expectQueued(ctx, n)
		}
		if err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		minimal, err := b.timeDrain(ctx, n, nil, func() error { return b.minimalDrain(ctx) })
		if err == nil {
			err = b.expectQueued(ctx, n)
		}
		if err != nil {
			return fmt.Errorf("minimal loop: %w", err)
		}
		alone.raw, alone.relay, alone.minimal = append(alone.raw, raw), append(alone.relay, relayed), append(alone.minimal, minimal)

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
			relayed, err = b.timeDrain(ctx, n, c, b.relayDrain(ctx, n))
		}
		if err == nil {
			minimal, err = b.timeDrain(ctx, n, c, func() error { return b.minimalDrain(ctx) })
		}
		c.close()
		if err != nil {
			return fmt.Errorf("live consumer: %w", err)
		}
		live.raw, live.relay, live.minimal = append(live.raw, raw), append(live.relay, relayed), append(live.minimal, minimal)
		fmt.Fprintf(b.o.stderr, "outbox-bench: drain round %d: broker alone: raw %.0f, relay %.0f, minimal loop %.0f msg/s; live consumer: raw %.0f, relay %.0f, minimal loop %.0f msg/s\n",
			round+1, alone.raw[round], alone.relay[round], alone.minimal[round], live.raw[round], live.relay[round], live.minimal[round])
	}
	for _, m := range []struct {
		what   string
		r      rates
		target bool
	}{{"broker alone", alone, true}, {"live consumer", live, false}} {
		ratio, each := ratios(m.r.relay, m.r.raw)
		mratio, meach := ratios(m.r.minimal, m.r.raw)
		rep.add(fmt.Sprintf("raw publish with confirms, window 1000, %s", m.what), fmt.Sprintf("%.0f msg/s", median(m.r.raw)),
			fmt.Sprintf("median of %d rounds", b.o.rounds), "", "", true)
		target := ""
		if m.target {
			target = ">= 0.90"
		}
		rep.add(fmt.Sprintf("drain %d-row backlog, %s", n, m.what), fmt.Sprintf("%.0f rows/s", median(m.r.relay)), "raw, the same round",
			fmt.Sprintf("%.2f (rounds: %s)", ratio, each), target, !m.target || ratio >= 0.90)
		rep.add(fmt.Sprintf("  minimal loop, %s", m.what), fmt.Sprintf("%.0f rows/s", median(m.r.minimal)), "raw, the same round",
			fmt.Sprintf("%.2f (rounds: %s)", mratio, meach), "", true)
	}
	return nil
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

// timeDrain fills the table with n rows and times drain; with a consumer c
// it ends when c has them all.
func (b *bench) timeDrain(ctx context.Context, n int, c *consumer, drain func() error) (float64, error) {
	if err := b.fill(ctx, n); err != nil {
		return 0, err
	}
	if _, err := b.db.Exec(ctx, "vacuum analyze "+b.table.Ident()); err != nil {
		return 0, err
	}
	return timeIt(n, func() error {
		var want int64
		if c != nil {
			want = c.n.Load() + int64(n)
		}
		if err := drain(); err != nil {
			return err
		}
		if c != nil {
			return c.waitFor(ctx, want, 5*time.Minute)
		}
		return nil
	})
}

// relayDrain returns a drain that runs the relay until it has published
// and deleted n rows.
func (b *bench) relayDrain(ctx context.Context, n int) func() error {
	return func() error {
		stop, published, err := b.startRelayCounting(ctx)
		if err != nil {
			return err
		}
		// Gathering the metrics costs some CPU: poll gently.
		pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		if err := harness.Poll(pctx, 10*time.Millisecond, func() bool { return published() >= float64(n) }); err != nil {
			_ = stop()
			return fmt.Errorf("relay published %.0f of %d rows: %w", published(), n, err)
		}
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
