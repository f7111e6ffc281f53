package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// drain compares draining a backlog of rows with raw publishing of as many
// messages, each timed from start until the consumer has them all. The two
// alternate for a few rounds and each round's ratio is taken side by side:
// the broker's rate on this machine swings by a third from one run to the
// next, and a ratio of two numbers measured a minute apart means little.
func (b *bench) drain(ctx context.Context, rep *report) error {
	n := b.o.rows
	c, err := b.consume(ctx, nil)
	if err != nil {
		return err
	}
	defer c.close()

	var raws, rates, ratios []float64
	for round := 0; round < b.o.rounds; round++ {
		want := c.n.Load() + int64(n)
		begin := time.Now()
		if err := b.rawPublish(ctx, n, 1000); err != nil {
			return err
		}
		if err := c.waitFor(ctx, want, 5*time.Minute); err != nil {
			return fmt.Errorf("raw: %w", err)
		}
		raw := float64(n) / time.Since(begin).Seconds()

		if err := b.fill(ctx, n); err != nil {
			return err
		}
		if _, err := b.db.Exec(ctx, "vacuum analyze "+b.table.Ident()); err != nil {
			return err
		}
		want = c.n.Load() + int64(n)
		begin = time.Now()
		stop, err := b.startRelay(ctx)
		if err != nil {
			return err
		}
		err = c.waitFor(ctx, want, 5*time.Minute)
		took := time.Since(begin)
		if serr := stop(); err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("drain: %w", err)
		}
		rate := float64(n) / took.Seconds()
		raws, rates, ratios = append(raws, raw), append(rates, rate), append(ratios, rate/raw)
	}
	each := make([]string, len(ratios))
	for i, r := range ratios {
		each[i] = fmt.Sprintf("%.2f", r)
	}
	ratio := median(ratios)
	rep.add("raw publish with confirms, window 1000", fmt.Sprintf("%.0f msg/s", median(raws)), fmt.Sprintf("median of %d rounds", b.o.rounds), "", "", true)
	rep.add(fmt.Sprintf("drain %d-row backlog", n), fmt.Sprintf("%.0f rows/s", median(rates)), "raw, the same round",
		fmt.Sprintf("%.2f (rounds: %s)", ratio, strings.Join(each, " ")), ">= 0.90", ratio >= 0.90)
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
