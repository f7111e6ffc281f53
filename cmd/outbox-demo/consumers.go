package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// subscriber is one consumer, with a connection of its own as a separate
// process would have.
type subscriber struct {
	name       string
	conn       *amqp.Connection
	queue      string
	deliveries <-chan amqp.Delivery
}

// setupBroker declares the jobs exchange and every consumer's queue before
// the relay starts: it publishes with the mandatory flag, so an event that
// no queue takes would be returned, retried and parked dead.
//
//   - api: the durable queue <prefix>.api, bound to job.completed. A real
//     service's queue outlives it: events wait there while it is down.
//   - web-1..3: instances of one scaled-out server. Each needs every event,
//     to push it to the browsers connected to it, so each has a queue of its
//     own (server-named, deleted with it) bound to job.*: the exchange puts
//     a copy of each event in every bound queue.
//   - audit: a queue bound to nothing until the poison row's exchange exists.
//   - reports: bound to job.completed in step 4; it consumes through its inbox.
//   - mailer: bound to report.ready, which the reports service enqueues.
func (d *demo) setupBroker() error {
	conn, err := harness.DialAMQP("outbox-demo setup")
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	ch, err := conn.Channel()
	if err == nil {
		err = ch.ExchangeDeclare(d.jobsExchange, amqp.ExchangeTopic, true, false, false, false, nil)
	}
	if err == nil {
		// An earlier run declared it: without it, the poison row is poison.
		err = ch.ExchangeDelete(d.auditExchange, false, false)
	}
	if err != nil {
		return fmt.Errorf("declare exchanges: %w", err)
	}
	for _, c := range consumers {
		queue, key := "", "job.*"
		switch c {
		case "api":
			queue, key = d.apiQueue, "job.completed"
		case "audit", "reports":
			key = ""
		case "mailer":
			key = "report.ready"
		}
		if err := d.subscribe(c, queue, key); err != nil {
			return err
		}
	}
	d.say("setup", "exchange %s (topic): queue %s bound to job.completed; web-1, web-2 and web-3 each a queue of its own bound to job.*;",
		d.jobsExchange, d.apiQueue)
	d.say("setup", "   the mailer's bound to report.ready")
	return nil
}

// subscribe connects consumer name, as a separate process would, and
// starts consuming from its queue: the durable queue named queue, emptied
// of what an earlier run left, or if queue is "" a server-named one that
// goes with the consumer; bound to the jobs exchange with key if not "".
// Deliveries wait until d.consume takes them.
func (d *demo) subscribe(name, queue, key string) error {
	conn, err := harness.DialAMQP("outbox-demo " + name)
	if err != nil {
		return err
	}
	s := &subscriber{name: name, conn: conn}
	d.subs = append(d.subs, s) // run closes them, whatever happens
	var q amqp.Queue
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Qos(200, 0, false)
	}
	if err == nil {
		q, err = ch.QueueDeclare(queue, queue != "", false, queue == "", false, nil)
	}
	if err == nil && queue != "" {
		_, err = ch.QueuePurge(queue, false)
	}
	if err == nil && key != "" {
		err = ch.QueueBind(q.Name, key, d.jobsExchange, false, nil)
	}
	if err == nil {
		s.queue = q.Name
		s.deliveries, err = ch.Consume(q.Name, name, false, false, false, false, nil)
	}
	if err != nil {
		return fmt.Errorf("%s: set up its queue: %w", name, err)
	}
	return nil
}

// fixAudit is the operator's fix for the poison row: declare its exchange
// and bind the audit queue to it.
func (d *demo) fixAudit() error {
	return d.bind("audit", "", d.auditExchange, amqp.ExchangeFanout)
}

// bind binds consumer name's queue to exchange with key, through the
// consumer's own connection (its queue is exclusive to it). If kind is not
// "", it declares the exchange first, of that kind.
func (d *demo) bind(name, key, exchange, kind string) error {
	i := slices.IndexFunc(d.subs, func(s *subscriber) bool { return s.name == name })
	if i < 0 {
		return fmt.Errorf("%s: not subscribed", name)
	}
	ch, err := d.subs[i].conn.Channel()
	if err == nil {
		defer func() { _ = ch.Close() }()
		if kind != "" {
			err = ch.ExchangeDeclare(exchange, kind, true, false, false, false, nil)
		}
	}
	if err == nil {
		err = ch.QueueBind(d.subs[i].queue, key, exchange, false, nil)
	}
	if err != nil {
		return fmt.Errorf("%s: bind its queue to %s: %w", name, exchange, err)
	}
	return nil
}

// consume records, shows and acknowledges s's deliveries until ctx is done
// (unacknowledged ones go back to the queue) or the broker ends them.
func (d *demo) consume(ctx context.Context, s *subscriber) error {
	for {
		var m amqp.Delivery
		var ok bool
		select {
		case m, ok = <-s.deliveries:
		case <-ctx.Done():
			return nil
		}
		if !ok {
			return fmt.Errorf("%s: the broker closed the consumer", s.name)
		}
		id, err := outbox.ParseMessageID(m.MessageId)
		first := err == nil && d.ledger.received(s.name, id)
		if s.name == "reports" {
			d.report(ctx, m) // acks after its commit
			continue
		}
		if first {
			d.show(s.name, m)
		}
		if err := m.Ack(false); err != nil {
			return fmt.Errorf("%s: ack: %w", s.name, err)
		}
	}
}

// show prints what consumer c does with the first delivery of event m.
func (d *demo) show(c string, m amqp.Delivery) {
	took := "?"
	if us, ok := m.Headers[headerCommittedAt].(int64); ok {
		took = fmt.Sprintf("%.1fms", float64(time.Since(time.UnixMicro(us)))/float64(time.Millisecond))
	}
	var ev jobEvent
	_ = json.Unmarshal(m.Body, &ev) // a bad payload shows as job 0
	switch c {
	case "api":
		d.say(c, "job %d completed (result=%d): pushed %s after COMMIT, no polling", ev.JobID, ev.Result, took)
	case "audit":
		d.say(c, "received %s, %s after COMMIT: it waited in the table until its exchange existed", m.RoutingKey, took)
	case "mailer":
		d.say(c, "report for job %d ready -> one email sent (%s after the reports service's COMMIT)", ev.JobID, took)
	default:
		d.say(c, "job %d completed -> pushed to the browsers connected to %s (%s after COMMIT)", ev.JobID, c, took)
	}
}
