package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one reading of a /metrics endpoint: its metric families by
// name, as github.com/prometheus/common/expfmt parses the text format. A
// counter's family keeps its _total suffix (outbox_published_total); a
// histogram's or a summary's has none (outbox_publish_seconds).
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses metrics in the Prometheus text format.
func ParseMetrics(r io.Reader) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return Metrics(mfs), nil
}

// Scrape reads and parses http://addr/metrics; addr is host:port, or
// :port for 127.0.0.1. Give ctx a deadline (ScrapeTimeout is the one
// Process.Metric uses).
func Scrape(ctx context.Context, addr string) (Metrics, error) {
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: GET /metrics: %s", addr, resp.Status)
	}
	m, err := ParseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	return m, nil
}

// Value returns the value of series, written as in the text format: a
// name, e.g. outbox_published_total, or a name with labels, e.g.
// outbox_connection_up{kind="amqp"}. It sums the values of every series
// of that name whose labels include the ones given, so a bare name sums
// over all label sets. A histogram or summary is read through name_count
// or name_sum. It returns false if no series matches, or series does not
// parse.
func (m Metrics) Value(series string) (float64, bool) {
	name, labels, ok := parseSeries(series)
	if !ok {
		return 0, false
	}
	value := sampleValue
	mf := m[name]
	if mf == nil {
		// name_count or name_sum of a histogram or a summary.
		if base, ok := strings.CutSuffix(name, "_count"); ok && m[base] != nil {
			mf, value = m[base], sampleCount
		} else if base, ok := strings.CutSuffix(name, "_sum"); ok && m[base] != nil {
			mf, value = m[base], sampleSum
		}
	}
	if mf == nil {
		return 0, false
	}
	var sum float64
	var found bool
	for _, metric := range mf.GetMetric() {
		if !hasLabels(metric, labels) {
			continue
		}
		if v, ok := value(metric); ok {
			sum += v
			found = true
		}
	}
	return sum, found
}

// parseSeries splits a series such as name{a="b"} into its name and
// labels, with the text format's own parser.
func parseSeries(series string) (string, []*dto.LabelPair, bool) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(series + " 0\n"))
	if err != nil || len(mfs) != 1 {
		return "", nil, false
	}
	for name, mf := range mfs {
		if len(mf.GetMetric()) == 1 {
			return name, mf.GetMetric()[0].GetLabel(), true
		}
	}
	return "", nil, false
}

// hasLabels reports whether metric has every label in want.
func hasLabels(metric *dto.Metric, want []*dto.LabelPair) bool {
	for _, w := range want {
		found := false
		for _, l := range metric.GetLabel() {
			if l.GetName() == w.GetName() && l.GetValue() == w.GetValue() {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// sampleValue reads a counter, a gauge or an untyped sample.
func sampleValue(m *dto.Metric) (float64, bool) {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue(), true
	case m.Gauge != nil:
		return m.GetGauge().GetValue(), true
	case m.Untyped != nil:
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}

func sampleCount(m *dto.Metric) (float64, bool) {
	switch {
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount()), true
	case m.Summary != nil:
		return float64(m.GetSummary().GetSampleCount()), true
	}
	return 0, false
}

func sampleSum(m *dto.Metric) (float64, bool) {
	switch {
	case m.Histogram != nil:
		return m.GetHistogram().GetSampleSum(), true
	case m.Summary != nil:
		return m.GetSummary().GetSampleSum(), true
	}
	return 0, false
}
