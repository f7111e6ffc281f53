package relay_test

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// MetricNames are the metric names DESIGN.md and the README promise; the
// dashboard and alert rules are checked against the same list.
var MetricNames = []string{
	"outbox_pending_rows", "outbox_dead_rows", "outbox_lag_seconds",
	"outbox_published_total", "outbox_publish_failures_total", "outbox_order_breaks_total",
	"outbox_delivery_latency_seconds", "outbox_batch_size", "outbox_leader",
	"outbox_connection_up", "outbox_reconnects_total", "outbox_notify_queue_usage_ratio",
	"outbox_stalled", "outbox_db_acquire_waits_total", "outbox_build_info",
	"outbox_gauges_refreshed_timestamp_seconds", "outbox_partitions_owned", "outbox_partition_changes_total",
	"outbox_partitions", "outbox_owned_lag_seconds",
}

func gather(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func value(mf *dto.MetricFamily, labels ...string) float64 {
	if mf == nil {
		return -1
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

// startMetered starts a relay with the test's configuration and a fresh
// registry, and returns the registry.
func startMetered(t *testing.T, b *testBundle) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.Registerer = reg
	start(t, cfg)
	return reg
}

func TestMetricsOfLeader(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.Registerer = reg
	cfg.MaxAttempts = 1
	start(t, cfg)
	insert(t, b.env.Pool, b,
		row{exchange: b.exchange, key: "ok", payload: []byte("1")},
		row{exchange: b.exchange, key: "ok", payload: []byte("2")},
		row{exchange: b.env.Name + ".missing", key: "bad", payload: []byte("3")},
	)
	testenv.Receive(t, b.recv, 2, 10*time.Second)
	testenv.WaitFor(t, 10*time.Second, "the failure to be counted", func() bool {
		return value(gather(t, reg)["outbox_publish_failures_total"], "reason", "exchange_not_found") == 1
	})
	mfs := gather(t, reg)
	for _, name := range MetricNames {
		if mfs[name] == nil {
			t.Errorf("metric %s is not exported", name)
		}
	}
	for name, want := range map[string]float64{
		"outbox_published_total":          2,
		"outbox_leader":                   1,
		"outbox_delivery_latency_seconds": 2,
	} {
		if got := value(mfs[name]); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	for _, c := range []string{"amqp", "postgres_listener"} {
		if got := value(mfs["outbox_connection_up"], "connection", c); got != 1 {
			t.Errorf("outbox_connection_up{connection=%q} = %v, want 1", c, got)
		}
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "outbox_") {
			t.Errorf("lint %s: %s", p.Metric, p.Text)
		}
	}
}

// A standby reports the table's backlog and lag but publishes nothing.
func TestMetricsOfStandby(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	// Hold the leader lock, as another relay would.
	holder := testenv.Conn(t)
	if _, err := holder.Exec(ctx, "select pg_advisory_lock($1)", b.env.Table.LockKey("leader")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.env.Pool.Exec(ctx, `insert into `+b.env.Table.Ident()+` (exchange, routing_key, payload, created_at)
		values ($1, 'old', 'x', now() - interval '30 seconds'), ($1, 'new', 'y', now())`, b.exchange); err != nil {
		t.Fatal(err)
	}
	if _, err := b.env.Pool.Exec(ctx, `insert into `+b.env.Table.Ident()+` (exchange, routing_key, payload, dead_at)
		values ($1, 'dead', 'z', now())`, b.exchange); err != nil {
		t.Fatal(err)
	}
	reg := startMetered(t, b)
	testenv.WaitFor(t, 10*time.Second, "gauges to be refreshed", func() bool {
		return value(gather(t, reg)["outbox_pending_rows"]) == 2
	})
	mfs := gather(t, reg)
	if lag := value(mfs["outbox_lag_seconds"]); lag < 30 || lag > 60 {
		t.Errorf("outbox_lag_seconds = %v, want about 30", lag)
	}
	if dead := value(mfs["outbox_dead_rows"]); dead != 1 {
		t.Errorf("outbox_dead_rows = %v, want 1", dead)
	}
	if leader := value(mfs["outbox_leader"]); leader != 0 {
		t.Errorf("outbox_leader = %v on a standby", leader)
	}
	select {
	case d := <-b.recv:
		t.Errorf("standby published %s", d.RoutingKey)
	case <-time.After(notificationLeeway):
	}
}

// TestDashboardAndAlertsUseExportedMetrics checks that every metric the
// Grafana dashboard and the Prometheus alert rules query is one the relay
// exports (TestMetricsOfLeader checks that MetricNames are).
func TestDashboardAndAlertsUseExportedMetrics(t *testing.T) {
	t.Parallel()
	known := map[string]bool{}
	for _, n := range MetricNames {
		known[n] = true
	}
	dash, err := os.ReadFile("../deploy/grafana/outbox-relay.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(dash, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	alerts, err := os.ReadFile("../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var alertNames []string
	for _, line := range strings.Split(string(alerts), "\n") {
		line = strings.TrimSpace(line)
		if e, ok := strings.CutPrefix(line, "expr:"); ok {
			exprs = append(exprs, e)
		}
		if a, ok := strings.CutPrefix(line, "- alert:"); ok {
			alertNames = append(alertNames, strings.TrimSpace(a))
		}
	}
	used := map[string]bool{}
	metric := regexp.MustCompile(`outbox_[a-z_]+`)
	for _, e := range exprs {
		for _, m := range metric.FindAllString(e, -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
			if !known[base] {
				t.Errorf("%q uses %s, which the relay does not export", e, m)
			}
			used[base] = true
		}
	}
	for _, n := range []string{"outbox_lag_seconds", "outbox_dead_rows", "outbox_leader", "outbox_published_total",
		"outbox_publish_failures_total", "outbox_delivery_latency_seconds"} {
		if !used[n] {
			t.Errorf("neither the dashboard nor the alerts use %s", n)
		}
	}
	if len(alertNames) < 3 {
		t.Errorf("alert rules = %v, want lag, dead rows and no-leader alerts at least", alertNames)
	}
}

// The gauges follow a drained backlog as soon as the relay runs out of
// rows, not a refresh interval (10s) later.
func TestGaugesRefreshWhenBacklogDrained(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.env.Pool.Exec(context.Background(), `insert into `+b.env.Table.Ident()+`
    (exchange, routing_key, payload, created_at, available_at)
select $1, 'old', 'x', now() - interval '1 hour', now() - interval '1 hour' from generate_series(1, 20)`, b.exchange)
	if err != nil {
		t.Fatal(err)
	}
	// Lock the rows, so that the relay's first refresh of the gauges sees
	// them before it can take them.
	ctx := context.Background()
	tx, err := b.env.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "select 1 from "+b.env.Table.Ident()+" for update"); err != nil {
		t.Fatal(err)
	}
	reg := startMetered(t, b)
	testenv.WaitFor(t, 5*time.Second, "the first refresh to see the hour-old backlog", func() bool {
		return value(gather(t, reg)["outbox_lag_seconds"]) > 3000
	})
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Receive(t, b.recv, 20, 10*time.Second)
	testenv.WaitFor(t, 5*time.Second, "lag and pending to drop to 0 once the backlog is gone", func() bool {
		mfs := gather(t, reg)
		return value(mfs["outbox_lag_seconds"]) == 0 && value(mfs["outbox_pending_rows"]) == 0
	})
}
