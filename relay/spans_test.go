package relay

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// BenchmarkPublishSpan is the CPU a publish span costs a batch of 500
// rows, each with a producer's traceparent, sampled, through the batch
// processor to an exporter that drops them; and with tracing off.
func BenchmarkPublishSpan(b *testing.B) {
	const n = 500
	c := &claim{rows: make([]Row, n)}
	for i := range c.rows {
		c.rows[i] = Row{ID: int64(i), Exchange: "jobs", RoutingKey: "job.completed", MessageID: "6f1c1b6e-9d4a-4c4e-8a57-3c1d2a9b0e11",
			Headers: []byte(`{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`), CreatedAt: time.Now()}
	}
	bt := newBatch(c)
	s := &amqpSent{msgs: make([]amqp.Publishing, n)}
	for i := range c.rows {
		bt.send[i] = true
		h, _ := decodeHeaders(c.rows[i].Headers)
		s.msgs[i].Headers = h
		bt.results[i] = Result{Row: &c.rows[i], Outcome: Acked}
	}
	limits := sdktrace.NewSpanLimits()
	limits.LinkCountLimit = n
	for _, tc := range []struct {
		name string
		tp   *sdktrace.TracerProvider
	}{
		{"off", nil},
		{"on", sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()), sdktrace.WithRawSpanLimits(limits))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p := &amqpPublisher{}
			if tc.tp != nil {
				p.tracer = tc.tp.Tracer(tracerName)
				defer func() { _ = tc.tp.Shutdown(context.Background()) }()
			}
			b.ReportAllocs()
			for b.Loop() {
				endSpan(p.startSpan(context.Background(), bt, s), bt.results)
			}
		})
	}
}
