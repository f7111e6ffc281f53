package outbox_test

import (
	"context"
	"encoding/json"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// spanContext returns ctx holding a sampled remote span of a fixed trace,
// with a tracestate, as an instrumented service's context would.
func spanContext(t *testing.T) (context.Context, trace.SpanContext) {
	t.Helper()
	ts, err := trace.ParseTraceState("vendor=abc")
	if err != nil {
		t.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
		TraceState: ts,
	})
	return trace.ContextWithSpanContext(context.Background(), sc), sc
}

// storedHeaders enqueues m with ctx and returns the headers of its row.
func storedHeaders(t *testing.T, ctx context.Context, b *testBundle, m outbox.Message) map[string]any {
	t.Helper()
	ids, err := b.w.Enqueue(ctx, b.env.Pool, m)
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	if err := b.env.Pool.QueryRow(context.Background(), `select headers from `+b.env.Table.Ident()+` where message_id = $1::uuid`,
		ids[0].String()).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if raw != nil {
		if err := json.Unmarshal(raw, &h); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// Enqueue writes the W3C trace context of the span in its ctx into the
// headers (the application set no propagator: W3C Trace Context is used),
// leaves the caller's map alone, adds nothing without a span, and keeps a
// traceparent the message already carries.
func TestEnqueueWritesTraceContext(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, _ := spanContext(t)

	mine := map[string]any{"tenant": "acme"}
	h := storedHeaders(t, ctx, b, outbox.Message{RoutingKey: "k", Headers: mine})
	if h["traceparent"] != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" ||
		h["tracestate"] != "vendor=abc" || h["tenant"] != "acme" {
		t.Errorf("headers %v; want the span's traceparent and tracestate beside tenant", h)
	}
	if len(mine) != 1 {
		t.Errorf("the caller's headers were changed: %v", mine)
	}

	if h := storedHeaders(t, context.Background(), b, outbox.Message{RoutingKey: "k"}); h != nil {
		t.Errorf("no span: headers %v, want none", h)
	}
	own := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	if h := storedHeaders(t, ctx, b, outbox.Message{RoutingKey: "k", Headers: map[string]any{"traceparent": own}}); h["traceparent"] != own || h["tracestate"] != nil {
		t.Errorf("message with its own traceparent: headers %v, want it kept alone", h)
	}
}

// The global propagator the application set is used: with baggage in it,
// the baggage travels too. (Not parallel: it sets the global.)
func TestEnqueueUsesGlobalPropagator(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })
	b := setup(t)
	ctx, _ := spanContext(t)
	m, err := baggage.NewMember("tenant", "acme")
	if err != nil {
		t.Fatal(err)
	}
	bag, err := baggage.New(m)
	if err != nil {
		t.Fatal(err)
	}
	h := storedHeaders(t, baggage.ContextWithBaggage(ctx, bag), b, outbox.Message{RoutingKey: "k"})
	if h["baggage"] != "tenant=acme" || h["traceparent"] == nil {
		t.Errorf("headers %v; want traceparent and baggage", h)
	}
}
