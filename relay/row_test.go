package relay

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestDecodeHeaders(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    amqp.Table
		wantErr string
	}{
		{in: ``, want: nil},
		{in: `null`, want: nil},
		{in: `{}`, want: amqp.Table{}},
		{in: `{"s": "x", "b": false}`, want: amqp.Table{"s": "x", "b": false}},
		{in: `{"i": 42, "neg": -7, "big": 9223372036854775807}`, want: amqp.Table{"i": int64(42), "neg": int64(-7), "big": int64(9223372036854775807)}},
		{in: `{"f": 1.5, "e": 1e3, "huge": 9223372036854775808}`, want: amqp.Table{"f": 1.5, "e": 1000.0, "huge": 9223372036854775808.0}},
		{in: `{"n": null, "x": 1}`, want: amqp.Table{"x": int64(1)}},
		{in: `{"o": {"a": [1, "b", null, {"c": true}]}}`, want: amqp.Table{"o": amqp.Table{"a": []any{int64(1), "b", nil, amqp.Table{"c": true}}}}},
		{in: `[1]`, wantErr: "want a JSON object, got an array"},
		{in: `"s"`, wantErr: "want a JSON object, got a string"},
		{in: `{"` + strings.Repeat("k", 256) + `": 1}`, wantErr: "key longer than 255 bytes"},
		{in: `{"x": 1e999}`, wantErr: "out of range"},
		{in: `{"o": {"a": [1, {"b": 1e999}]}}`, wantErr: `header "o.a[1].b": number 1e999 out of range`},
		{in: `{"o": [[1, 2e999]]}`, wantErr: `header "o[0][1]"`},
		{in: `{bad`, wantErr: "invalid headers"},
	} {
		got, err := decodeHeaders([]byte(tc.in))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, errInvalidHeaders) {
				t.Errorf("decodeHeaders(%s) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("decodeHeaders(%s): %v", tc.in, err)
			continue
		}
		if fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", tc.want) {
			t.Errorf("decodeHeaders(%s) = %#v, want %#v", tc.in, got, tc.want)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("decodeHeaders(%s) is not a valid AMQP table: %v", tc.in, err)
		}
	}
}

func TestBackoffGrowsWithJitterUpToMax(t *testing.T) {
	t.Parallel()
	base, maxD := 100*time.Millisecond, 2*time.Second
	for n := 1; n <= 12; n++ {
		want := min(base<<(n-1), maxD)
		for range 50 {
			d := backoff(n, base, maxD)
			if d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %s, want in [%s, %s]", n, d, want/2, want)
			}
		}
	}
}

func TestPublishingMapsColumns(t *testing.T) {
	t.Parallel()
	ct := "application/json"
	created := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	r := Row{ID: 1, MessageID: "3f0e", ContentType: &ct, Headers: []byte(`{"a": 1}`), Payload: []byte("p"), CreatedAt: created}
	p, err := r.publishing("", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if p.MessageId != "3f0e" || p.ContentType != ct || !p.Timestamp.Equal(created) || p.DeliveryMode != amqp.Persistent ||
		string(p.Body) != "p" || p.Headers["a"] != int64(1) {
		t.Errorf("publishing = %+v", p)
	}
}

var benchHeaders = []byte(`{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "attempt": 3, "ratio": 0.25, "tags": ["a", "b"], "meta": {"tenant": "acme", "urgent": true}}`)

func BenchmarkDecodeHeaders(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeHeaders(benchHeaders); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPublishing(b *testing.B) {
	ct := "application/json"
	r := Row{ID: 1, MessageID: "a6b0c1d2-0000-4000-8000-000000000000", ContentType: &ct, Headers: benchHeaders,
		Payload: make([]byte, 256), CreatedAt: time.Now()}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.publishing("", time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPublishingNoHeaders(b *testing.B) {
	r := Row{ID: 1, MessageID: "a6b0c1d2-0000-4000-8000-000000000000", Payload: make([]byte, 256), CreatedAt: time.Now()}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.publishing("", time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

// The property columns become AMQP properties; app_id falls back to the
// relay's AppID; expiration is what remains, rounded up to a millisecond,
// and a row whose time ran out is not built at all.
func TestPublishingMapsProperties(t *testing.T) {
	t.Parallel()
	now := time.Now()
	s := func(v string) *string { return &v }
	prio := int16(255)
	r := Row{MessageID: "m", Type: s("job.completed"), CorrelationID: s("req-42"), ReplyTo: s("api.replies"),
		Priority: &prio, ContentEncoding: s("gzip"), AppID: s("billing"), ExpiresAt: now.Add(1500*time.Millisecond + 1)}
	p, err := r.publishing("relay", now)
	if err != nil {
		t.Fatal(err)
	}
	if p.Type != "job.completed" || p.CorrelationId != "req-42" || p.ReplyTo != "api.replies" || p.Priority != 255 ||
		p.ContentEncoding != "gzip" || p.AppId != "billing" || p.Expiration != "1501" {
		t.Errorf("publishing = %+v", p)
	}

	bare := Row{MessageID: "m"}
	if p, err := bare.publishing("relay", now); err != nil || p.AppId != "relay" || p.Expiration != "" || p.Priority != 0 || p.Type != "" {
		t.Errorf("row without properties: %+v, %v; want only AppId relay", p, err)
	}

	// More than RabbitMQ holds (a row from before migration 005's check):
	// capped, not sent to have the channel closed over it.
	long := Row{MessageID: "m", ExpiresAt: now.Add(100 * 365 * 24 * time.Hour)}
	if p, err := long.publishing("", now); err != nil || p.Expiration != "4294967295" {
		t.Errorf("100 years left: expiration %q, %v; want 4294967295", p.Expiration, err)
	}

	for _, left := range []time.Duration{0, -time.Second} {
		r := Row{MessageID: "m", ExpiresAt: now.Add(left)}
		if _, err := r.publishing("", now); !errors.Is(err, errExpired) {
			t.Errorf("%s left: err %v, want errExpired", left, err)
		}
	}
}
