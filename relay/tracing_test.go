package relay_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/relay"
)

// otlpReceiver is an OTLP/HTTP trace receiver: it keeps the spans the
// relay exports.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []*tracepb.Span
}

func newOTLPReceiver(t *testing.T) (*otlpReceiver, string) {
	t.Helper()
	rcv := &otlpReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var req coltrace.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &req)
		}
		if r.URL.Path != "/v1/traces" || err != nil {
			t.Errorf("OTLP receiver: %s %s: %v", r.Method, r.URL.Path, err)
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		rcv.mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				rcv.spans = append(rcv.spans, ss.GetSpans()...)
			}
		}
		rcv.mu.Unlock()
		out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	return rcv, srv.URL
}

func (r *otlpReceiver) all() []*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tracepb.Span(nil), r.spans...)
}

// A message enqueued inside a span arrives with a traceparent of that
// trace, and the relay, pointed by the OTEL_ variables at an OTLP/HTTP
// receiver, exports a publish span linked to the producer's span, naming
// the message and how long it waited in the table. With
// OTEL_TRACES_SAMPLER=always_off it exports nothing. (Not parallel: it sets
// the process's environment.)
func TestRelayExportsPublishSpansLinkedToProducer(t *testing.T) {
	for _, sampler := range []string{"always_on", "always_off"} {
		t.Run(sampler, func(t *testing.T) {
			rcv, url := newOTLPReceiver(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
			t.Setenv("OTEL_TRACES_SAMPLER", sampler)
			b := setup(t)
			tp, err := relay.NewTracerProviderFromEnv(context.Background(), "test", relay.BatchSizeDefault)
			if err != nil || tp == nil {
				t.Fatalf("NewTracerProviderFromEnv = %v, %v; want a provider", tp, err)
			}
			cfg := b.config(t)
			cfg.TracerProvider = tp
			stop := start(t, cfg)

			// The producer: its own provider, as an instrumented service has.
			producer := sdktrace.NewTracerProvider()
			ctx, span := producer.Tracer("producer").Start(context.Background(), "pay order")
			w, err := outbox.NewWriter(b.env.Table.Ident())
			if err != nil {
				t.Fatal(err)
			}
			ids, err := w.Enqueue(ctx, b.env.Pool, outbox.Message{Exchange: b.exchange, RoutingKey: "order.paid"})
			span.End()
			if err != nil {
				t.Fatal(err)
			}
			psc := span.SpanContext()
			traceID, spanID := psc.TraceID(), psc.SpanID()

			select {
			case d := <-b.recv:
				tp, _ := d.Headers["traceparent"].(string)
				if d.MessageId != ids[0].String() || !strings.HasPrefix(tp, "00-"+psc.TraceID().String()+"-"+psc.SpanID().String()) {
					t.Errorf("delivery %s with traceparent %q; want %s in trace %s", d.MessageId, tp, ids[0], psc.TraceID())
				}
			case <-time.After(30 * time.Second):
				t.Fatal("message did not arrive")
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil { // flushes
				t.Fatal(err)
			}

			spans := rcv.all()
			if sampler == "always_off" {
				if len(spans) != 0 {
					t.Errorf("always_off exported %d spans", len(spans))
				}
				return
			}
			var found bool
			for _, s := range spans {
				for _, l := range s.GetLinks() {
					if !bytes.Equal(l.GetTraceId(), traceID[:]) || !bytes.Equal(l.GetSpanId(), spanID[:]) {
						continue
					}
					found = true
					la := map[string]any{}
					for _, kv := range l.GetAttributes() {
						la[kv.GetKey()] = kv.GetValue()
					}
					sa := map[string]string{}
					for _, kv := range s.GetAttributes() {
						sa[kv.GetKey()] = kv.GetValue().GetStringValue()
					}
					wait := l.GetAttributes()
					var waited *float64
					for _, kv := range wait {
						if kv.GetKey() == string(relay.WaitSecondsKey) {
							v := kv.GetValue().GetDoubleValue()
							waited = &v
						}
					}
					if s.GetName() != "publish "+b.exchange || s.GetKind() != tracepb.Span_SPAN_KIND_PRODUCER ||
						sa["messaging.system"] != "rabbitmq" || sa["messaging.destination.name"] != b.exchange ||
						sa["messaging.operation.type"] != "send" {
						t.Errorf("span %q kind %v attributes %v; want publish %s, producer, rabbitmq send", s.GetName(), s.GetKind(), sa, b.exchange)
					}
					if la["messaging.message.id"] == nil || la["messaging.message.id"].(interface{ GetStringValue() string }).GetStringValue() != ids[0].String() ||
						waited == nil || *waited < 0 || *waited > 30 {
						t.Errorf("link attributes %v; want the message id %s and its wait", la, ids[0])
					}
				}
			}
			if !found {
				var names []string
				for _, s := range spans {
					names = append(names, s.GetName()+" trace "+hex.EncodeToString(s.GetTraceId()))
				}
				t.Errorf("no exported span links to the producer's span %s; got %v", psc.SpanID(), names)
			}
		})
	}
}

// The OTEL_ variables turn tracing on only with an endpoint and an OTLP
// exporter, and refuse what the relay cannot do.
func TestTracingFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		on   bool
		fail string
	}{
		{env: map[string]string{}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, on: true},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces", "OTEL_TRACES_EXPORTER": "otlp"}, on: true},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "console"}, fail: "OTEL_TRACES_EXPORTER"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, fail: "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, on: true},
	} {
		for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER",
			"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
			t.Setenv(k, tc.env[k])
		}
		on, err := relay.TracingFromEnv()
		if on != tc.on || (err == nil) != (tc.fail == "") || (err != nil && !strings.HasPrefix(err.Error(), tc.fail+":")) {
			t.Errorf("%v: on %t, err %v; want on %t, error naming %q", tc.env, on, err, tc.on, tc.fail)
		}
	}
}
