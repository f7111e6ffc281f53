package relay

import (
	"cmp"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/schema"
)

// metrics are the relay's Prometheus collectors. Their names are a contract
// (DESIGN.md, the README and the dashboards depend on them). Each carries
// the label table (see labelTable).
type metrics struct {
	published       prometheus.Counter
	failures        *prometheus.CounterVec
	orderBreaks     prometheus.Counter
	deliveryLatency prometheus.Histogram
	batchSize       prometheus.Histogram
	leader          prometheus.Gauge
	// partitionsOwned and partitionChanges follow the relay's share of
	// the table (share.go).
	partitionsOwned  prometheus.Gauge
	partitionChanges *prometheus.CounterVec
	connUp           *prometheus.GaugeVec
	reconnects       *prometheus.CounterVec
	pending          prometheus.Gauge
	dead             prometheus.Gauge
	lag              prometheus.Gauge
	// partitions is the table's P, and ownedLag the lag of the partitions
	// this relay owns; refreshed with the table gauges (gauges.go).
	partitions      prometheus.Gauge
	ownedLag        prometheus.Gauge
	notifyQueue     prometheus.Gauge
	stalled         prometheus.Gauge
	acquireWaits    prometheus.Counter
	gaugesRefreshed prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_published_total",
			Help: "Rows published and confirmed by the broker, then deleted.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outbox_publish_failures_total",
			Help: "Rows whose publish failed, by reason (nack, returned, exchange_not_found, invalid, too_large count as attempts; timeout, channel_closed do not; expired rows are parked dead at once).",
		}, []string{"reason"}),
		orderBreaks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_order_breaks_total",
			Help: "Rows confirmed while an earlier row of the same partition_key in the same batch failed: consumers saw them before that row's retry.",
		}),
		deliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "outbox_delivery_latency_seconds",
			Help:    "Time from a row's created_at to the broker's confirm.",
			Buckets: prometheus.ExponentialBucketsRange(0.001, 600, 20),
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "outbox_batch_size",
			Help:    "Rows per claimed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_leader",
			Help: "1 while this relay owns at least one of its table's partitions and claims for it (with one partition: it is the active relay).",
		}),
		partitionsOwned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_partitions_owned",
			Help: "Partitions of the table this relay owns and claims for.",
		}),
		partitionChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outbox_partition_changes_total",
			Help: "Partitions this relay gained or released (change: gained, released), its session's loss included.",
		}, []string{"change"}),
		connUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outbox_connection_up",
			Help: "1 while the named connection (postgres_listener, amqp) is up.",
		}, []string{"connection"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outbox_reconnects_total",
			Help: "Connections (re)established after the first, by connection.",
		}, []string{"connection"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_pending_rows",
			Help: "Rows not yet published and not dead (exact up to 100000, then estimated from the span of ids).",
		}),
		dead: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_dead_rows",
			Help: "Rows parked as dead after too many failed attempts.",
		}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_lag_seconds",
			Help: "Age of the oldest pending row that is available for publishing.",
		}),
		partitions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_partitions",
			Help: "The table's number of partitions (1 before migration 007); every relay exports the same value.",
		}),
		ownedLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_owned_lag_seconds",
			Help: "Age of the oldest pending row available for publishing in the partitions this relay owns; 0 when it owns none.",
		}),
		notifyQueue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_notify_queue_usage_ratio",
			Help: "pg_notification_queue_usage(): fraction of PostgreSQL's NOTIFY queue in use; when full, notifying commits fail.",
		}),
		stalled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_stalled",
			Help: "1 while this relay leads but has claimed no row for 10s although a row it could claim has waited that long.",
		}),
		acquireWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_db_acquire_waits_total",
			Help: "Times the relay waited more than 1s for a database connection of its pool (a full session pool, max_connections).",
		}),
		gaugesRefreshed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_gauges_refreshed_timestamp_seconds",
			Help: "Unix time of the last successful refresh of the table gauges (pending, dead, lag, partitions, owned lag, NOTIFY queue); while refreshes fail, those keep their last values.",
		}),
	}
	for _, r := range []string{ReasonNack, ReasonReturned, ReasonExchangeNotFound, ReasonInvalid, ReasonTooLarge, ReasonTimeout, ReasonChannelClosed, ReasonExpired, ReasonClaimTooOld} {
		m.failures.WithLabelValues(r)
	}
	for _, c := range []string{"gained", "released"} {
		m.partitionChanges.WithLabelValues(c)
	}
	for _, c := range []string{connListener, connAMQP} {
		m.connUp.WithLabelValues(c)
		m.reconnects.WithLabelValues(c)
	}
	if reg != nil {
		reg.MustRegister(m.published, m.failures, m.orderBreaks, m.deliveryLatency, m.batchSize,
			m.leader, m.partitionsOwned, m.partitionChanges, m.connUp, m.reconnects, m.pending, m.dead, m.lag, m.partitions, m.ownedLag, m.notifyQueue,
			m.stalled, m.acquireWaits, m.gaugesRefreshed)
	}
	return m
}

// Connection label values of outbox_connection_up and outbox_reconnects_total.
const (
	connListener = "postgres_listener"
	connAMQP     = "amqp"
)

// labelTable wraps reg so that every metric registered through it has the
// label table: the table as schema.name, unquoted, with the schema public
// when the configuration names none (the relay resolves such a name
// through search_path, public by default). Several relays of several
// tables may then share one Prometheus job. A nil reg stays nil.
func labelTable(reg prometheus.Registerer, t schema.Table) prometheus.Registerer {
	if reg == nil {
		return nil
	}
	return prometheus.WrapRegistererWith(prometheus.Labels{"table": cmp.Or(t.Schema, "public") + "." + t.Name}, reg)
}

// newBuildInfo returns outbox_build_info, always 1, whose labels say what
// runs: version and revision as given (Config.Version and Revision), and
// the Go version. An alert on its absence finds targets that export nothing.
func newBuildInfo(version, revision string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "outbox_build_info",
		Help: "Always 1; the labels say which build of the relay runs.",
		ConstLabels: prometheus.Labels{
			"version":   version,
			"revision":  revision,
			"goversion": runtime.Version(),
		},
	})
	g.Set(1)
	return g
}
