package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// Large rows for the memory scenario: a backlog of 600 rows of
// 2 MiB (1.2 GB, which took a relay that loaded whole batches to 1.2 GiB),
// and one row of 15 MiB, just under the default OUTBOX_MAX_MESSAGE_SIZE.
const (
	largeRows    = 600
	largeRowSize = 2 << 20
	hugeRowSize  = 15 << 20
)

// rssBound is the peak resident memory the relay must stay under, with no
// memory limit set, however long the backlog: on rows of 2 MiB
// and on a row of 15 MiB (the sidecar in deploy/kubernetes allows 128 MiB).
// With the default OUTBOX_BATCH_BYTES of 8 MiB the relay holds the payloads
// of one batch at a time, plus the database driver's read buffer for the
// largest row: 45-50 MiB on both. Rows near OUTBOX_MAX_MESSAGE_SIZE (16
// MiB) one after another, each a batch of its own, take it to about 95 MiB.
const rssBound = 64 << 20

// memory runs the relay binary as its own process on a backlog of 1,000
// rows and on a large one, and compares the peak resident memory (VmHWM)
// of the two; then on backlogs of large rows, against rssBound.
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
			fmt.Sprintf("%.0f rows/s", rate), "", "<= "+mib(rssBound), peak <= rssBound)
	}
	ratio := float64(peaks[1]) / float64(peaks[0])
	rep.add(fmt.Sprintf("peak RSS, %d vs %d rows", sizes[1], sizes[0]), mib(peaks[1]), mib(peaks[0]),
		fmt.Sprintf("%.2f", ratio), "within 20%", ratio <= 1.2 && ratio >= 1/1.2)
	for _, l := range []struct{ rows, size int }{{largeRows, largeRowSize}, {1, hugeRowSize}} {
		peak, rate, err := b.drainLarge(ctx, l.rows, l.size)
		if err != nil {
			return fmt.Errorf("memory, %d rows of %s: %w", l.rows, mib(int64(l.size)), err)
		}
		rep.add(fmt.Sprintf("relay process draining %d rows of %s", l.rows, mib(int64(l.size))), fmt.Sprintf("peak RSS %s", mib(peak)),
			fmt.Sprintf("%s of payloads", mib(int64(l.rows*l.size))), fmt.Sprintf("%.0f rows/s", rate),
			"<= "+mib(rssBound), peak <= rssBound)
	}
	return nil
}

// drainLarge is drainProcess on n rows with random payloads of size bytes,
// which PostgreSQL stores out of line (TOAST) and cannot compress.
func (b *bench) drainLarge(ctx context.Context, n, size int) (peak int64, rate float64, err error) {
	saved := b.payload
	defer func() { b.payload = saved }()
	b.payload = make([]byte, size)
	_, _ = rand.Read(b.payload)
	return b.drainProcess(ctx, n)
}

// drainProcessTimeout bounds drainProcess's wait for every row.
const drainProcessTimeout = 10 * time.Minute

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
	// Sample the peak as the relay drains: it may grow until the end.
	var peak int64
	sample := func() {
		if v, err := vmHWM(p.Pid()); err == nil {
			peak = max(peak, v)
		}
	}
	pctx, cancel := context.WithTimeout(ctx, drainProcessTimeout)
	defer cancel()
	err = harness.Poll(pctx, 0, func() bool { sample(); return c.n.Load() >= int64(n) || p.Exited() })
	if err == nil && c.n.Load() < int64(n) {
		err = fmt.Errorf("the relay exited first: %s", p.State())
	}
	if err != nil {
		_ = p.Stop()
		return 0, 0, fmt.Errorf("received %d of %d rows: %w", c.n.Load(), n, err)
	}
	rate := float64(n) / time.Since(begin).Seconds()
	sample()
	if err := p.Stop(); err != nil {
		return 0, 0, err
	}
	return peak, rate, nil
}
