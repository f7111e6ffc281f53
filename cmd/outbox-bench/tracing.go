package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/relay"
)

// tracing drains the same backlog with tracing off (no OTEL_ variable) and
// on (OTEL_EXPORTER_OTLP_ENDPOINT set, sampled at 100 %, every row carrying
// a producer's traceparent), side by side in each round, and reports the
// ratio. Spans go over OTLP/HTTP to a sink in this process that reads and
// drops them, so the figure is the relay's cost, not a collector's.
func (b *bench) tracing(ctx context.Context, rep *report) error {
	sink, err := startSpanSink()
	if err != nil {
		return err
	}
	defer sink.close()
	b.traced = true // both ways read the same rows
	n := b.o.rows
	var off, on []float64
	for round := 0; round < b.o.rounds; round++ {
		offRun, err := b.timeDrain(ctx, n, nil, harness.Name, b.relayDrain(ctx, n))
		if err == nil {
			err = b.expectQueued(ctx, n)
		}
		if err != nil {
			return fmt.Errorf("tracing off: %w", err)
		}
		onRun, err := b.tracedDrain(ctx, n, sink.url)
		if err != nil {
			return fmt.Errorf("tracing on: %w", err)
		}
		off, on = append(off, offRun.rate), append(on, onRun.rate)
		fmt.Fprintf(b.o.stderr, "outbox-bench: tracing round %d: off %.0f, on %.0f rows/s, %d export requests\n",
			round+1, offRun.rate, onRun.rate, sink.requests.Load())
	}
	ratio, each := ratios(on, off)
	rep.add(fmt.Sprintf("drain %d-row backlog, tracing off (no OTEL_ variable)", n), fmt.Sprintf("%.0f rows/s", median(off)),
		fmt.Sprintf("median of %d rounds", b.o.rounds), "", "", true)
	rep.add("  tracing on, sampled 100 %, rows with traceparent", fmt.Sprintf("%.0f rows/s", median(on)),
		"off, the same round", fmt.Sprintf("%.2f (rounds: %s)", ratio, each), "", true)
	return nil
}

// tracedDrain is one drain with tracing on, through the OTEL_ variables
// as an operator would set them, the provider flushed at the end.
func (b *bench) tracedDrain(ctx context.Context, n int, endpoint string) (drainRun, error) {
	for k, v := range map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_SAMPLER": "always_on"} {
		if err := os.Setenv(k, v); err != nil {
			return drainRun{}, err
		}
		defer os.Unsetenv(k)
	}
	tp, err := relay.NewTracerProviderFromEnv(ctx, "bench", b.o.batch)
	if err != nil || tp == nil {
		return drainRun{}, fmt.Errorf("tracer provider: %v, %w", tp, err)
	}
	b.tracer = tp
	defer func() { b.tracer = nil }()
	run, err := b.timeDrain(ctx, n, nil, harness.Name, b.relayDrain(ctx, n))
	if err == nil {
		err = b.expectQueued(ctx, n)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return run, errors.Join(err, tp.Shutdown(sctx))
}

// fillTraced is fill with a producer's traceparent in every row's headers.
func (b *bench) fillTraced(ctx context.Context, n int) error {
	headers := []byte(`{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`)
	rows := make([][]any, 0, 10_000)
	for done := 0; done < n; {
		rows = rows[:0]
		for ; len(rows) < cap(rows) && done < n; done++ {
			rows = append(rows, []any{"", b.queue, b.payload, headers})
		}
		if _, err := b.db.CopyFrom(ctx, pgx.Identifier{b.table.Schema, b.table.Name}, []string{"exchange", "routing_key", "payload", "headers"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("fill backlog: %w", err)
		}
	}
	return nil
}

// spanSink is an OTLP/HTTP endpoint that reads what it is sent and drops it.
type spanSink struct {
	url      string
	srv      *http.Server
	done     chan struct{}
	requests atomic.Int64
}

func startSpanSink() (*spanSink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("span sink: %w", err)
	}
	s := &spanSink{url: "http://" + ln.Addr().String(), done: make(chan struct{})}
	s.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		s.requests.Add(1)
		w.Header().Set("Content-Type", "application/x-protobuf")
	})}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

func (s *spanSink) close() {
	_ = s.srv.Close()
	<-s.done
}
