package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Headers the jobs service sets on its events.
const (
	// headerCommittedAt is when the producer committed, in Unix
	// microseconds. It is read just before the event is enqueued, the
	// last step before COMMIT, so the latencies shown include the commit
	// itself: they are an upper bound. (The AMQP timestamp, the row's
	// created_at, has whole seconds only.)
	headerCommittedAt = "committed_at_us"
	headerBurst       = "burst"      // burst number, on job.bulk
	headerBurstSize   = "burst_size" // events in the burst, on job.bulk
)

// jobEvent is the JSON payload of job.started and job.completed.
type jobEvent struct {
	JobID  int64  `json:"job_id"`
	State  string `json:"state"`
	Result int    `json:"result,omitempty"`
}

// bulkEvent is the JSON payload of job.bulk.
type bulkEvent struct {
	Burst int `json:"burst"`
	Seq   int `json:"seq"`
}

// apiService is the consumer of the jobs service's events: it prints each
// completion, counts the starts, and sums up the bursts. Only its
// subscriber's goroutine calls it.
type apiService struct {
	out    *printer
	bursts map[int64]*burstProgress
}

type burstProgress struct{ got int64 }

// handle shows one delivery (the first of each event) on the api.
func (a *apiService) handle(m amqp.Delivery, r receipt) {
	switch m.RoutingKey {
	case keyStarted:
		// Counted by the ledger: a line each would double the noise.
	case keyCompleted:
		var ev jobEvent
		if err := json.Unmarshal(m.Body, &ev); err != nil {
			a.out.printf("api", "undecodable %s event: %v", m.RoutingKey, err)
			return
		}
		if !r.ours {
			a.out.printf("api", "job %d completed (left over from an earlier run)", ev.JobID)
			return
		}
		a.out.printf("api", "job %d completed (result=%d) %s after commit — pushed to us, no polling", ev.JobID, ev.Result, sinceCommit(m))
	case keyBulk:
		if !r.ours {
			return // the summary counts them
		}
		burst, _ := headerInt(m.Headers, headerBurst)
		size, _ := headerInt(m.Headers, headerBurstSize)
		b := a.bursts[burst]
		if b == nil {
			b = &burstProgress{}
			a.bursts[burst] = b
		}
		b.got++
		if b.got == size {
			a.out.printf("api", "burst %d: received all %d events, the last %s after commit", burst, size, sinceCommit(m))
			delete(a.bursts, burst)
		}
	}
}

// webInstance is one instance of a scaled-out web server that pushes
// completions to the browsers connected to it. Only its subscriber's
// goroutine calls it.
type webInstance struct {
	name    string
	clients int
	out     *printer
}

// handle pushes one completion to the instance's (imaginary) browsers.
func (w *webInstance) handle(m amqp.Delivery, r receipt) {
	var ev jobEvent
	if err := json.Unmarshal(m.Body, &ev); err != nil {
		w.out.printf(w.name, "undecodable broadcast: %v", err)
		return
	}
	suffix := ""
	if !r.ours {
		suffix = " (left over from an earlier run)"
	}
	w.out.printf(w.name, "job %d %s -> pushing to %s%s", ev.JobID, ev.State, plural(w.clients, "websocket client"), suffix)
}

// auditService consumes the audit exchange of the poison episode. Its queue
// is exclusive to its connection, so bind goes through that connection too.
// Only its subscriber's goroutine calls handle.
type auditService struct {
	sub   *subscriber
	queue string // server-named
	out   *printer
}

// bind declares exchange (fanout, durable), as the operator's fix does,
// and binds the audit queue to it.
func (a *auditService) bind(exchange string) error {
	ch, err := a.sub.conn.Channel()
	if err != nil {
		return fmt.Errorf("audit: open channel: %w", err)
	}
	defer func() { _ = ch.Close() }()
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", exchange, err)
	}
	if err := ch.QueueBind(a.queue, "", exchange, false, nil); err != nil {
		return fmt.Errorf("audit: bind queue to %s: %w", exchange, err)
	}
	return nil
}

// handle shows one delivery (the first of each event) on the audit queue.
func (a *auditService) handle(m amqp.Delivery, r receipt) {
	var ev jobEvent
	if err := json.Unmarshal(m.Body, &ev); err != nil {
		a.out.printf("audit", "undecodable %s event: %v", m.RoutingKey, err)
		return
	}
	if !r.ours {
		a.out.printf("audit", "received %s for job %d (left over from an earlier run)", m.RoutingKey, ev.JobID)
		return
	}
	wait := "?"
	if us, ok := headerInt(m.Headers, headerCommittedAt); ok {
		wait = time.Since(time.UnixMicro(us)).Round(100 * time.Millisecond).String()
	}
	a.out.printf("audit", "received %s for job %d, %s after commit: it waited in the table until its exchange existed", m.RoutingKey, ev.JobID, wait)
}

// sinceCommit is the time from the producer's commit to now, e.g. "2.4ms".
func sinceCommit(m amqp.Delivery) string {
	us, ok := headerInt(m.Headers, headerCommittedAt)
	if !ok {
		return "?ms"
	}
	return fmt.Sprintf("%.1fms", float64(time.Since(time.UnixMicro(us)))/float64(time.Millisecond))
}

// headerInt reads an integer header. The relay maps JSON integers to int64;
// other integer types are accepted for other publishers.
func headerInt(h amqp.Table, key string) (int64, bool) {
	switch v := h[key].(type) {
	case int64:
		return v, true
	case int32:
		return int64(v), true
	case int:
		return int64(v), true
	case float64:
		return int64(v), true
	}
	return 0, false
}

// plural formats n things, e.g. "1 websocket client", "3 websocket clients".
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return strconv.Itoa(n) + " " + thing + "s"
}
