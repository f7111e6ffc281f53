package relay

import (
	"log/slog"

	"github.com/lmittmann/tint"
)

// observe records a settled batch in metrics and logs (order breaks are
// keyOrder's to count).
func (l *loop) observe(results []Result, st settled) {
	var failures int
	var firstErr Result
	for _, res := range results {
		switch {
		case res.Outcome == Acked:
			l.metrics.published.Inc()
			l.metrics.deliveryLatency.Observe(res.AckedAt.Sub(res.Row.CreatedAt).Seconds())
		case res.Reason == reasonHeld:
		default:
			l.metrics.failures.WithLabelValues(res.Reason).Inc()
			if res.Outcome == Failed {
				if failures == 0 {
					firstErr = res
				}
				failures++
			}
		}
	}
	if failures > 0 {
		l.log.Warn("publish failed", slog.Int("rows", failures), slog.Int64("id", firstErr.Row.ID),
			slog.String("message_id", firstErr.Row.MessageID), rowAttr("exchange", firstErr.Row.Exchange),
			rowAttr("routing_key", firstErr.Row.RoutingKey), slog.Int("attempt", firstErr.Row.Attempts+1),
			slog.String("reason", firstErr.Reason), tint.Err(firstErr.Err))
	}
	for _, id := range st.dead {
		for _, res := range results {
			if res.Row.ID == id {
				l.log.Warn("row parked dead", slog.Int64("id", id), slog.String("message_id", res.Row.MessageID),
					rowAttr("exchange", res.Row.Exchange), rowAttr("routing_key", res.Row.RoutingKey),
					slog.Int("attempt", res.Row.Attempts+1), tint.Err(res.Err))
			}
		}
	}
	l.log.Debug("batch settled", slog.Int("rows", len(results)), slog.Int("deleted", st.deleted),
		slog.Int("retried", st.retried), slog.Int("dead", len(st.dead)))
}
