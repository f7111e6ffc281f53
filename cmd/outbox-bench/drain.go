package main

import (
	"context"
	"fmt"
	"time"
)

// drain compares draining a backlog of rows with raw publishing of as many
// messages, each timed from start until the consumer has them all.
func (b *bench) drain(ctx context.Context, rep *report) error {
	n := b.o.rows
	c, err := b.consume(ctx, nil)
	if err != nil {
		return err
	}
	defer c.close()

	begin := time.Now()
	if err := b.rawPublish(ctx, n, 1000); err != nil {
		return err
	}
	if err := c.waitFor(ctx, int64(n), 5*time.Minute); err != nil {
		return fmt.Errorf("raw: %w", err)
	}
	raw := float64(n) / time.Since(begin).Seconds()

	if err := b.fill(ctx, n); err != nil {
		return err
	}
	if _, err := b.db.Exec(ctx, "vacuum analyze "+b.table.Ident()); err != nil {
		return err
	}
	begin = time.Now()
	stop, err := b.startRelay(ctx)
	if err != nil {
		return err
	}
	err = c.waitFor(ctx, int64(2*n), 5*time.Minute)
	took := time.Since(begin)
	if serr := stop(); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	rate := float64(n) / took.Seconds()
	rep.add("raw publish with confirms, window 1000", fmt.Sprintf("%.0f msg/s", raw), "", "", "", true)
	rep.add(fmt.Sprintf("drain %d-row backlog", n), fmt.Sprintf("%.0f rows/s", rate), fmt.Sprintf("%.0f msg/s raw", raw),
		fmt.Sprintf("%.2f", rate/raw), ">= 0.90", rate/raw >= 0.90)
	return nil
}
