package relay

import (
	"context"
	"fmt"
	"os"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Tracing is off unless the OpenTelemetry variables ask for it: an OTLP
// endpoint (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT)
// and OTEL_TRACES_EXPORTER unset or otlp. Off, the relay holds no tracer
// and its loop pays one nil check per batch.

// TracingFromEnv reports whether the OTEL_ variables turn tracing on, and
// refuses settings the relay cannot honour: an exporter other than otlp
// or none, or a protocol other than http/protobuf. It connects to nothing.
func TracingFromEnv() (bool, error) {
	exporter := os.Getenv("OTEL_TRACES_EXPORTER")
	switch exporter {
	case "none":
		return false, nil
	case "", "otlp":
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER: %q is not supported; want otlp or none", exporter)
	}
	if os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" {
		return false, nil
	}
	for _, v := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := os.Getenv(v); p != "" && p != "http/protobuf" {
			return false, fmt.Errorf("%s: %q is not supported; want http/protobuf", v, p)
		}
		if os.Getenv(v) != "" {
			break // the traces-specific one wins
		}
	}
	return true, nil
}

// NewTracerProviderFromEnv returns the tracer provider the OTEL_ variables
// ask for (see TracingFromEnv), or nil when tracing is off. It exports
// spans over OTLP/HTTP in batches; the endpoint, headers, timeouts,
// sampler (OTEL_TRACES_SAMPLER, parent-based always-on by default), batch
// processor and resource (OTEL_SERVICE_NAME, default "outbox-relay";
// OTEL_RESOURCE_ATTRIBUTES) follow the variables' usual meaning. A publish
// span links each message of a batch, so the link limit is raised to
// batchSize. The caller shuts the provider down, which flushes it.
func NewTracerProviderFromEnv(ctx context.Context, version string, batchSize int) (*sdktrace.TracerProvider, error) {
	on, err := TracingFromEnv()
	if err != nil || !on {
		return nil, err
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(semconv.ServiceName("outbox-relay"), semconv.ServiceVersion(version)),
		resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost())
	if err != nil {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	limits := sdktrace.NewSpanLimits() // OTEL_SPAN_LINK_COUNT_LIMIT and friends
	limits.LinkCountLimit = max(limits.LinkCountLimit, batchSize)
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res),
		sdktrace.WithRawSpanLimits(limits)), nil
}
