package outbox

import (
	"context"
	"maps"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// traceContext is the propagator used when the application set no global
// one: otel's default global propagator injects nothing.
var traceContext = propagation.TraceContext{}

// withTrace returns h with the trace context of the span in ctx added (W3C
// traceparent and tracestate, or whatever the global propagator the
// application set writes, e.g. baggage too), so that consumers continue
// the producer's trace. It returns h itself when ctx holds no valid span
// or h already carries a traceparent, and never changes the caller's map.
func withTrace(ctx context.Context, h map[string]any) map[string]any {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return h
	}
	if _, ok := h["traceparent"]; ok {
		return h
	}
	var p propagation.TextMapPropagator = otel.GetTextMapPropagator()
	if len(p.Fields()) == 0 {
		p = traceContext
	}
	carrier := propagation.MapCarrier{}
	p.Inject(ctx, carrier)
	if len(carrier) == 0 {
		return h
	}
	out := make(map[string]any, len(h)+len(carrier))
	maps.Copy(out, h)
	for k, v := range carrier {
		if _, ok := out[k]; !ok {
			out[k] = v
		}
	}
	return out
}
