package main

import (
	"context"
	"fmt"
	"time"
)

// memory runs the relay binary as its own process on a backlog of 1,000
// rows and on a large one, and compares the peak resident memory (VmHWM)
// of the two.
func (b *bench) memory(ctx context.Context, rep *report) error {
	var peaks []int64
	sizes := []int{1000, b.o.memoryRows}
	for _, n := range sizes {
		peak, rate, err := b.drainProcess(ctx, n)
		if err != nil {
			return fmt.Errorf("memory, %d rows: %w", n, err)
		}
		peaks = append(peaks, peak)
		rep.add(fmt.Sprintf("relay process draining %d rows", n), fmt.Sprintf("peak RSS %s", mib(peak)),
			fmt.Sprintf("%.0f rows/s", rate), "", "<= 64MiB", peak <= 64<<20)
	}
	ratio := float64(peaks[1]) / float64(peaks[0])
	rep.add(fmt.Sprintf("peak RSS, %d vs %d rows", sizes[1], sizes[0]), mib(peaks[1]), mib(peaks[0]),
		fmt.Sprintf("%.2f", ratio), "within 20%", ratio <= 1.2 && ratio >= 1/1.2)
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20)) }

// drainProcess fills n rows, runs `outbox-relay run` until the consumer has
// them all, stops it with SIGTERM and returns its peak RSS and drain rate.
func (b *bench) drainProcess(ctx context.Context, n int) (int64, float64, error) {
	if err := b.fill(ctx, n); err != nil {
		return 0, 0, err
	}
	if _, err := b.db.Exec(ctx, "vacuum analyze "+b.table.Ident()); err != nil {
		return 0, 0, err
	}
	c, err := b.consume(ctx, nil)
	if err != nil {
		return 0, 0, err
	}
	defer c.close()
	begin := time.Now()
	p, err := b.startRelayProcess(ctx)
	if err != nil {
		return 0, 0, err
	}
	var peak int64
	deadline := time.Now().Add(10 * time.Minute)
	for c.n.Load() < int64(n) {
		if v, err := vmHWM(p.pid()); err == nil {
			peak = max(peak, v)
		}
		if time.Now().After(deadline) {
			_ = p.stop()
			return 0, 0, fmt.Errorf("received %d of %d rows", c.n.Load(), n)
		}
		select {
		case <-c.signal:
		case <-time.After(100 * time.Millisecond):
		}
	}
	rate := float64(n) / time.Since(begin).Seconds()
	if v, err := vmHWM(p.pid()); err == nil {
		peak = max(peak, v)
	}
	if err := p.stop(); err != nil {
		return 0, 0, err
	}
	return peak, rate, nil
}
