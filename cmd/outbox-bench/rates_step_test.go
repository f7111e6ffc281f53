package main

import (
	"context"
	"io"
	"math"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// One short step of the rates scenario each way, under the race detector:
// every row written arrives, each has a latency, and the CPU of the relay
// process and of the backends is read.
func TestRateStep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bin, err := harness.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := newBench(ctx, options{adminURL: testenv.DatabaseURL(), amqpURL: testenv.AMQPURL(), relayBin: bin, batch: 500, stderr: io.Discard}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	if err := b.createLoopTable(ctx, loopTable, true); err != nil {
		t.Fatal(err)
	}
	for _, viaLoop := range []bool{false, true} {
		load := steadyLoad{table: b.table.Ident(), rate: 50, writers: 4, d: time.Second}
		if viaLoop {
			load.table = pgxIdent(loopTable)
		}
		s, err := b.runRate(ctx, load, viaLoop)
		if err != nil {
			t.Fatalf("via loop %t: %v", viaLoop, err)
		}
		t.Logf("via loop %t: %d rows, %s, cpu %+v, %.0f queries/s", viaLoop, s.rows, s.latency(), s.cpu, s.qps)
		if s.rows == 0 || len(s.lat) != s.rows {
			t.Errorf("via loop %t: %d latencies for %d rows", viaLoop, len(s.lat), s.rows)
		}
		if math.IsNaN(s.cpu.backends) || (!viaLoop && s.cpu.proc <= 0) {
			t.Errorf("via loop %t: CPU not read: %+v", viaLoop, s.cpu)
		}
	}
}
