package harness

import (
	"strings"
	"testing"
)

// exposition is a relay's /metrics in little: a counter, a labelled gauge,
// a histogram and an untyped sample.
const exposition = `# HELP outbox_published_total Rows published and deleted.
# TYPE outbox_published_total counter
outbox_published_total 1234
# HELP outbox_connection_up Whether a connection is up.
# TYPE outbox_connection_up gauge
outbox_connection_up{kind="amqp"} 1
outbox_connection_up{kind="postgres"} 0
outbox_connection_up{kind="postgres_listener"} 1
# HELP outbox_lag_seconds Age of the oldest pending row.
# TYPE outbox_lag_seconds gauge
outbox_lag_seconds 0.25
# HELP outbox_publish_seconds Publish latency.
# TYPE outbox_publish_seconds histogram
outbox_publish_seconds_bucket{le="0.1"} 3
outbox_publish_seconds_bucket{le="+Inf"} 4
outbox_publish_seconds_sum 0.5
outbox_publish_seconds_count 4
# TYPE outbox_reconnects_total counter
outbox_reconnects_total{connection="amqp",reason="closed"} 2
outbox_reconnects_total{connection="amqp",reason="timeout"} 1
outbox_reconnects_total{connection="postgres_listener",reason="closed"} 5
plain_untyped 7
`

func TestMetricsValue(t *testing.T) {
	t.Parallel()
	m, err := ParseMetrics(strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		series string
		want   float64
		ok     bool
	}{
		{"outbox_published_total", 1234, true},
		{"outbox_lag_seconds", 0.25, true},
		{`outbox_connection_up{kind="amqp"}`, 1, true},
		{`outbox_connection_up{kind="postgres"}`, 0, true},
		{"outbox_connection_up", 2, true}, // summed over label sets
		{`outbox_reconnects_total{connection="amqp"}`, 3, true},
		{`outbox_reconnects_total{reason="closed",connection="postgres_listener"}`, 5, true},
		{"outbox_publish_seconds_count", 4, true},
		{"outbox_publish_seconds_sum", 0.5, true},
		{"plain_untyped", 7, true},
		{"outbox_publish_seconds", 0, false}, // a histogram has no single value
		{`outbox_connection_up{kind="nats"}`, 0, false},
		{"outbox_missing_total", 0, false},
		{`outbox_connection_up{kind=`, 0, false}, // does not parse
	} {
		got, ok := m.Value(tt.series)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Value(%s) = %v, %t; want %v, %t", tt.series, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseMetricsError(t *testing.T) {
	t.Parallel()
	if _, err := ParseMetrics(strings.NewReader("outbox_published_total one\n")); err == nil {
		t.Fatal("ParseMetrics accepted a value that is not a number")
	}
}
