package inbox

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts what consumers and Prune did. Create it once per
// registry with NewMetrics and share it between Consumers (their counters
// carry a consumer label) and Prune calls (WithMetrics). A nil *Metrics
// counts nothing.
type Metrics struct {
	claims       *prometheus.CounterVec
	duplicates   *prometheus.CounterVec
	failures     *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	pruned       prometheus.Counter
}

// NewMetrics creates the inbox's counters and registers them on reg; a nil
// reg registers nothing (the counters still count, for tests). The series:
//
//	inbox_claims_total{consumer}            messages claimed for the first time and handled
//	inbox_duplicates_total{consumer}        duplicates acked without running the handler
//	inbox_handler_failures_total{consumer}  failed transactions: handler errors, failed begins, claims and commits (rolled back)
//	inbox_dead_lettered_total{consumer,reason} deliveries rejected without requeue
//	inbox_pruned_rows_total                 claims deleted by Prune
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inbox_claims_total",
			Help: "Messages claimed in the inbox for the first time, whose handler committed.",
		}, []string{"consumer"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inbox_duplicates_total",
			Help: "Deliveries whose message_id the consumer had already claimed, acked without running the handler.",
		}, []string{"consumer"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inbox_handler_failures_total",
			Help: "Failed transactions: handler errors and failed begins, claims or commits; the transaction rolled back and the claim with it.",
		}, []string{"consumer"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inbox_dead_lettered_total",
			Help: "Deliveries rejected without requeue: reason message_id (missing or not a UUID) or failures (the handler failed too often).",
		}, []string{"consumer", "reason"}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "inbox_pruned_rows_total",
			Help: "Inbox claims deleted by prune.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.claims, m.duplicates, m.failures, m.deadLettered, m.pruned} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("inbox: register metrics: %w", err)
		}
	}
	return m, nil
}

// The dead-lettering reasons of inbox_dead_lettered_total.
const (
	reasonMessageID = "message_id"
	reasonFailures  = "failures"
)

func (m *Metrics) claimed(consumer string) {
	if m != nil {
		m.claims.WithLabelValues(consumer).Inc()
	}
}

func (m *Metrics) duplicate(consumer string) {
	if m != nil {
		m.duplicates.WithLabelValues(consumer).Inc()
	}
}

func (m *Metrics) failed(consumer string) {
	if m != nil {
		m.failures.WithLabelValues(consumer).Inc()
	}
}

func (m *Metrics) rejected(consumer, reason string) {
	if m != nil {
		m.deadLettered.WithLabelValues(consumer, reason).Inc()
	}
}

func (m *Metrics) prunedRows(n int64) {
	if m != nil && n > 0 {
		m.pruned.Add(float64(n))
	}
}
