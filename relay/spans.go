package relay

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Publish spans, by the OpenTelemetry messaging conventions.
//
// One span per batch, kind PRODUCER, from the first publish to the last
// confirm, with one link per message sent: to the producer's span (the
// traceparent Enqueue wrote into its headers), carrying the message's id,
// exchange and routing key and how long it waited in the table
// (outbox.wait_seconds, created_at to publish). A span per message would
// cost a span's ids, timestamps and export for each of thousands of
// messages a second; a link is a few attributes on a span that exists
// anyway. The headers are published untouched, so consumers continue the
// producer's trace, not the relay's.

// tracerName names the relay's tracer (its instrumentation scope).
const tracerName = "github.com/outbox-relay/outbox-relay/relay"

// WaitSecondsKey is the link attribute of a publish span that says how
// long the message waited in the table before it was published.
const WaitSecondsKey = attribute.Key("outbox.wait_seconds")

// w3c reads the producer's context from the headers the relay publishes.
var w3c = propagation.TraceContext{}

// headerCarrier reads an AMQP headers table as a propagation carrier.
type headerCarrier amqp.Table

func (c headerCarrier) Get(key string) string {
	s, _ := c[key].(string)
	return s
}
func (c headerCarrier) Set(string, string) {}
func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// startSpan starts the publish span of batch b, whose messages s holds,
// and returns it; nil when tracing is off.
func (p *amqpPublisher) startSpan(ctx context.Context, b *batch, s *amqpSent) trace.Span {
	if p.tracer == nil {
		return nil
	}
	now := time.Now()
	links := make([]trace.Link, 0, len(b.rows))
	exchange, mixed, n := "", false, 0
	for i := range b.rows {
		if !b.send[i] {
			continue
		}
		r := &b.rows[i]
		if n > 0 && r.Exchange != exchange {
			mixed = true
		}
		exchange = r.Exchange
		n++
		var sc trace.SpanContext
		if h := s.msgs[i].Headers; h != nil {
			sc = trace.SpanContextFromContext(w3c.Extract(context.Background(), headerCarrier(h)))
		}
		links = append(links, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{
			semconv.MessagingMessageID(r.MessageID),
			semconv.MessagingDestinationName(destination(r.Exchange)),
			semconv.MessagingRabbitMQDestinationRoutingKey(r.RoutingKey),
			WaitSecondsKey.Float64(now.Sub(r.CreatedAt).Seconds()),
		}})
	}
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemRabbitMQ,
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("publish"),
		semconv.MessagingBatchMessageCount(n),
	}
	name := "publish"
	if !mixed && n > 0 {
		attrs = append(attrs, semconv.MessagingDestinationName(destination(exchange)))
		name = "publish " + destination(exchange)
	}
	_, span := p.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindProducer), trace.WithTimestamp(now),
		trace.WithLinks(links...), trace.WithAttributes(attrs...))
	return span
}

// endSpan ends a publish span with what became of its batch.
func endSpan(span trace.Span, results []Result) {
	if span == nil {
		return
	}
	var acked, failed, notSent int
	for _, r := range results {
		switch r.Outcome {
		case Acked:
			acked++
		case Failed:
			failed++
		default:
			if r.Reason != reasonHeld {
				notSent++
			}
		}
	}
	span.SetAttributes(attribute.Int("outbox.acked", acked), attribute.Int("outbox.failed", failed),
		attribute.Int("outbox.not_sent", notSent))
	if failed > 0 || notSent > 0 {
		span.SetStatus(codes.Error, "not every message was confirmed")
	}
	span.End()
}

// destination names an exchange as the conventions do: the default
// exchange is "amq.default".
func destination(exchange string) string {
	if exchange == "" {
		return "amq.default"
	}
	return exchange
}
