package inbox_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// newMetrics registers the inbox's metrics on a fresh registry.
func newMetrics(t *testing.T) (*inbox.Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := inbox.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// wantMetrics checks that every line of want, `series value`, is what reg
// reports, and that the metrics pass promlint.
func wantMetrics(t *testing.T, reg *prometheus.Registry, want string) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := harness.Metrics{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf
	}
	for _, line := range strings.Split(strings.TrimSpace(want), "\n") {
		series, value, _ := strings.Cut(strings.TrimSpace(line), " ")
		w, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("bad expectation %q", line)
		}
		if v, ok := got.Value(series); !ok || v != w {
			t.Errorf("%s = %v (found %t); want %v", series, v, ok, w)
		}
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("metrics lint: %v %v", problems, err)
	}
}

// A second registration on one registry fails rather than double counting;
// a nil registerer registers nothing and still counts.
func TestNewMetrics(t *testing.T) {
	t.Parallel()
	_, reg := newMetrics(t)
	if _, err := inbox.NewMetrics(reg); err == nil {
		t.Error("registering the inbox metrics twice on one registry: no error")
	}
	if m, err := inbox.NewMetrics(nil); err != nil || m == nil {
		t.Errorf("NewMetrics(nil) = %v, %v", m, err)
	}
}
