package relay_test

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// Every outbox metric carries the table, so that alerts can aggregate per
// table; outbox_build_info says what runs; the gauges say when they were
// last read from the table.
func TestMetricsCarryTableAndBuild(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.Registerer = reg
	cfg.Version, cfg.Revision = "v1.2.3", "0123abc"
	begin := time.Now()
	start(t, cfg)
	testenv.WaitFor(t, 10*time.Second, "the gauges to be refreshed", func() bool {
		return value(gather(t, reg)["outbox_gauges_refreshed_timestamp_seconds"]) > 0
	})
	mfs := gather(t, reg)
	table := b.env.Table.Schema + "." + b.env.Table.Name
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "outbox_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			if got := label(m.GetLabel(), "table"); got != table {
				t.Errorf("%s{%v}: table %q, want %q", name, m.GetLabel(), got, table)
			}
		}
	}
	bi := mfs["outbox_build_info"]
	if bi == nil || len(bi.GetMetric()) != 1 {
		t.Fatalf("outbox_build_info = %v, want one series", bi)
	}
	m := bi.GetMetric()[0]
	for k, want := range map[string]string{"version": "v1.2.3", "revision": "0123abc", "goversion": runtime.Version()} {
		if got := label(m.GetLabel(), k); got != want {
			t.Errorf("outbox_build_info %s = %q, want %q", k, got, want)
		}
	}
	if m.GetGauge().GetValue() != 1 {
		t.Errorf("outbox_build_info = %v, want 1", m.GetGauge().GetValue())
	}
	at := time.Unix(0, int64(value(mfs["outbox_gauges_refreshed_timestamp_seconds"])*1e9))
	if at.Before(begin.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Errorf("outbox_gauges_refreshed_timestamp_seconds = %s, want between %s and now", at, begin)
	}
}

func label(pairs []*dto.LabelPair, name string) string {
	for _, p := range pairs {
		if p.GetName() == name {
			return p.GetValue()
		}
	}
	return ""
}
