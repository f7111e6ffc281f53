package main

import (
	"context"
	"io"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// testLargeRows is the backlog of 2 MiB rows TestRelayMemoryStaysBounded
// drains: a quarter of the bench's, so that `make test` stays quick; the
// relay holds one batch of payloads at a time either way.
const testLargeRows = 150

// The relay's release build, run as its own process, drains a backlog of
// 2 MiB rows, then a row of 15 MiB, with its peak resident memory under
// rssBound: memory follows OUTBOX_BATCH_BYTES and the largest row, not the
// backlog (the bench's memory scenario drains 600 rows of 2 MiB).
func TestRelayMemoryStaysBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// Without -race, as `make build` builds it: the race detector's
	// shadow memory would be measured too.
	bin, err := harness.Build(ctx, t.TempDir(), "-trimpath")
	if err != nil {
		t.Fatal(err)
	}
	b, err := newBench(ctx, options{adminURL: testenv.DatabaseURL(), amqpURL: testenv.AMQPURL(), relayBin: bin, stderr: io.Discard}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	for _, l := range []struct{ rows, size int }{{testLargeRows, largeRowSize}, {1, hugeRowSize}} {
		peak, rate, err := b.drainLarge(ctx, l.rows, l.size)
		if err != nil {
			t.Fatalf("%d rows of %s: %v", l.rows, mib(int64(l.size)), err)
		}
		t.Logf("%d rows of %s: peak RSS %s, %.0f rows/s", l.rows, mib(int64(l.size)), mib(peak), rate)
		if peak > rssBound {
			t.Errorf("%d rows of %s: peak RSS %s, over the bound of %s", l.rows, mib(int64(l.size)), mib(peak), mib(rssBound))
		}
	}
}
