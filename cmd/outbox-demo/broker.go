package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/relay"
)

// Routing keys of the jobs service's events.
const (
	keyStarted   = "job.started"
	keyCompleted = "job.completed"
	keyBulk      = "job.bulk"
	keyAudit     = "audit.job" // on the audit exchange, the poison episode's
)

// prefetch bounds the unacknowledged deliveries a consumer holds.
const prefetch = 200

// dial opens a connection to the broker named name (RabbitMQ shows it in
// its management UI). Like the relay, it takes the first of a
// comma-separated OUTBOX_AMQP_URL, and the password from
// OUTBOX_AMQP_PASSWORD_FILE if set. Its errors never hold the URL.
func (d *demo) dial(name string) (*amqp.Connection, error) {
	first, _, _ := strings.Cut(d.opts.env.AMQPURL, ",")
	uri, err := amqp.ParseURI(strings.TrimSpace(first))
	if err != nil {
		return nil, fmt.Errorf("OUTBOX_AMQP_URL: %w", relay.RedactURIError(err))
	}
	cfg := amqp.Config{Properties: amqp.NewConnectionProperties(), Dial: amqp.DefaultDial(10 * time.Second)}
	cfg.Properties.SetClientConnectionName(name)
	if f := d.opts.env.AMQPPasswordFile; f != "" {
		pw, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("OUTBOX_AMQP_PASSWORD_FILE: %w", err)
		}
		cfg.SASL = []amqp.Authentication{&amqp.PlainAuth{Username: uri.Username, Password: strings.TrimSpace(string(pw))}}
	}
	conn, err := amqp.DialConfig(uri.String(), cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ (OUTBOX_AMQP_URL) as %s: %w", name, err)
	}
	return conn, nil
}

// setupBroker declares the exchanges and the consumers' queues, and starts
// consuming, so that the relay's first publish finds every binding in
// place (it publishes with the mandatory flag: an unroutable message is
// retried, then parked dead). Deliveries wait in the subscribers until
// their run is called. Close the subscribers returned, even with an error.
func (d *demo) setupBroker() ([]*subscriber, error) {
	n := d.names
	admin, err := d.dial("outbox-demo setup")
	if err != nil {
		return nil, err
	}
	defer func() { _ = admin.Close() }()
	ch, err := admin.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	for _, x := range []struct{ name, kind string }{{n.jobs, amqp.ExchangeTopic}, {n.broadcast, amqp.ExchangeFanout}} {
		// Durable and idempotent: declaring an existing exchange with the
		// same arguments is a no-op.
		if err := ch.ExchangeDeclare(x.name, x.kind, true, false, false, false, nil); err != nil {
			return nil, fmt.Errorf("declare exchange %s: %w", x.name, err)
		}
	}

	// The api service's queue is durable, as a real service's would be:
	// events committed while the service is down wait for it there. It
	// binds job.started too, though it only counts those: an event that no
	// queue takes would be returned to the relay and, after retries, parked
	// as dead.
	api, err := d.subscribe(consumerAPI, func(ch *amqp.Channel) (string, error) {
		if _, err := ch.QueueDeclare(n.apiQueue, true, false, false, false, nil); err != nil {
			return "", err
		}
		for _, key := range []string{keyStarted, keyCompleted, keyBulk} {
			if err := ch.QueueBind(n.apiQueue, key, n.jobs, false, nil); err != nil {
				return "", err
			}
		}
		purged, err := ch.QueuePurge(n.apiQueue, false)
		if err != nil {
			return "", err
		}
		if purged > 0 {
			d.out.printf("api", "purged %d messages an earlier run left in %s", purged, n.apiQueue)
		}
		return n.apiQueue, nil
	})
	if err != nil {
		return nil, err
	}
	subs := []*subscriber{api}
	a := &apiService{out: d.out, bursts: map[int64]*burstProgress{}}
	api.handle = a.handle

	// Every web instance needs every completion, to push it to the browsers
	// connected to it. Each has its own exclusive, server-named queue,
	// deleted when the instance goes, bound to a fanout exchange: the
	// exchange copies each event to every queue bound to it. The jobs
	// service enqueues such broadcasts on purpose, in the same transaction
	// as its other events. A binding of job.# on the jobs exchange would do
	// too, but would also flood every instance with the bursts of job.bulk,
	// which the browsers do not need.
	for i := 1; i <= webInstances; i++ {
		s, err := d.subscribe(webConsumer(i), func(ch *amqp.Channel) (string, error) {
			q, err := ch.QueueDeclare("", false, true, true, false, nil)
			if err != nil {
				return "", err
			}
			return q.Name, ch.QueueBind(q.Name, "", n.broadcast, false, nil)
		})
		if err != nil {
			return subs, err
		}
		subs = append(subs, s)
		w := &webInstance{name: consumerName(s.id), clients: [...]int{2, 3, 1}[(i-1)%3], out: d.out}
		s.handle = w.handle
	}

	if d.opts.poisonAt == 0 {
		return subs, nil
	}
	// The poison episode needs its exchange missing. An earlier run left
	// it declared; deleting an exchange that does not exist is a no-op.
	if err := ch.ExchangeDelete(n.audit, false, false); err != nil {
		return subs, fmt.Errorf("delete exchange %s: %w", n.audit, err)
	}
	// The audit service is up, its queue empty and bound to nothing, until
	// the episode's fix declares the exchange and binds it.
	audit := &auditService{out: d.out}
	s, err := d.subscribe(consumerAudit, func(ch *amqp.Channel) (string, error) {
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		audit.queue = q.Name
		return q.Name, err
	})
	if err != nil {
		return subs, err
	}
	audit.sub = s
	s.handle = audit.handle
	d.audit = audit
	return append(subs, s), nil
}

// subscriber is one consumer: its own connection (it stands for a separate
// process), a channel, and a queue that declare sets up.
type subscriber struct {
	id         consumerID
	conn       *amqp.Connection
	ch         *amqp.Channel
	deliveries <-chan amqp.Delivery
	handle     func(amqp.Delivery, receipt)
	ledger     *ledger
}

// subscribe connects consumer id, lets declare set up its queue on a
// channel with a prefetch limit, and starts consuming from it.
func (d *demo) subscribe(id consumerID, declare func(*amqp.Channel) (string, error)) (*subscriber, error) {
	name := consumerName(id)
	conn, err := d.dial("outbox-demo " + name)
	if err != nil {
		return nil, err
	}
	s := &subscriber{id: id, conn: conn, ledger: d.ledger}
	if s.ch, err = conn.Channel(); err == nil {
		err = s.ch.Qos(prefetch, 0, false)
	}
	var queue string
	if err == nil {
		queue, err = declare(s.ch)
	}
	if err == nil {
		s.deliveries, err = s.ch.Consume(queue, name, false, false, false, false, nil)
	}
	if err != nil {
		s.close()
		return nil, fmt.Errorf("%s: set up queue: %w", name, err)
	}
	return s, nil
}

// run handles deliveries until ctx is done, then cancels the consumer,
// handles what was already on its way, and closes the connection.
func (s *subscriber) run(ctx context.Context) error {
	defer s.close()
	for {
		select {
		case m, ok := <-s.deliveries:
			if !ok {
				return fmt.Errorf("%s: the broker closed the consumer (connection lost?)", consumerName(s.id))
			}
			if err := s.deliver(m); err != nil {
				return err
			}
		case <-ctx.Done():
			if err := s.ch.Cancel(consumerName(s.id), false); err != nil {
				return nil // the channel is gone, and its deliveries with it
			}
			for m := range s.deliveries {
				if err := s.deliver(m); err != nil {
					return err
				}
			}
			return nil
		}
	}
}

// deliver records a delivery, shows it and acknowledges it.
func (s *subscriber) deliver(m amqp.Delivery) error {
	var r receipt
	if id, err := outbox.ParseMessageID(m.MessageId); err == nil {
		r = s.ledger.received(s.id, id)
	}
	if r.first || !r.ours {
		s.handle(m, r)
	}
	if err := m.Ack(false); err != nil && !errors.Is(err, amqp.ErrClosed) {
		return fmt.Errorf("%s: ack: %w", consumerName(s.id), err)
	}
	return nil
}

// close closes the connection, and with it the channel; it may be called
// more than once.
func (s *subscriber) close() { _ = s.conn.Close() }
