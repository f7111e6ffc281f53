package relay

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// exchangeCacheTTL is how long an exchange seen to exist is trusted without
// another passive declare. An exchange deleted within that time closes the
// channel under its batch; the batch is then not sent, the cache is dropped,
// and the next attempt finds the missing exchange.
const exchangeCacheTTL = 30 * time.Second

// amqpPublisher is the AMQP side of the relay: one connection, one channel in
// confirm mode, and a second channel for passive exchange checks (a failed
// check closes the channel it ran on). It is used by one goroutine.
type amqpPublisher struct {
	urls           []string
	passwordFile   string
	name           string
	mandatory      bool
	confirmTimeout time.Duration
	maxMessageSize int
	returnBuffer   int
	log            *slog.Logger

	next      int      // index into urls of the node to dial next
	netConn   net.Conn // the TCP connection under conn, to break a stalled write
	conn      *amqp.Connection
	ch        *amqp.Channel
	checkCh   *amqp.Channel
	connClose chan *amqp.Error
	chClose   chan *amqp.Error
	chErr     *amqp.Error // what chClose delivered, kept
	blockedCh chan amqp.Blocking
	returns   chan amqp.Return
	blocked   atomic.Bool              // the broker blocked publishing (resource alarm)
	exchanges map[string]time.Time     // exchange → when it was last seen to exist
	returned  map[string][]amqp.Return // message id → returns not yet matched to a row
	// isolate makes the next batch go out one message at a time: the broker
	// closed the channel over one message of the last batch (e.g. one larger
	// than its max_message_size) without saying which.
	isolate bool
	// rowRefused says the last channel close was the broker refusing a
	// message (a channel exception, the connection alive): reconnecting at
	// once is right, the broker is fine.
	rowRefused bool
}

func newPublisher(cfg Config, name string) *amqpPublisher {
	return &amqpPublisher{
		urls:           splitURLs(cfg.AMQPURL),
		passwordFile:   cfg.AMQPPasswordFile,
		name:           name,
		mandatory:      !cfg.AllowUnroutable,
		confirmTimeout: cfg.ConfirmTimeout,
		maxMessageSize: cfg.MaxMessageSize,
		returnBuffer:   cfg.BatchSize + 16,
		log:            cfg.Logger,
		exchanges:      make(map[string]time.Time),
		returned:       make(map[string][]amqp.Return),
	}
}

// Connected reports whether the connection and confirm channel are up.
func (p *amqpPublisher) Connected() bool {
	return p.conn != nil && !p.conn.IsClosed() && p.ch != nil && !p.ch.IsClosed()
}

// Connect dials the next node (after closing what is left of an earlier
// connection) and opens the confirm channel. Each call tries one node, so the
// caller's back-off paces failover through the list.
func (p *amqpPublisher) Connect(ctx context.Context) error {
	p.Close()
	raw := p.urls[p.next%len(p.urls)]
	p.next++
	uri, err := amqp.ParseURI(raw)
	if err != nil {
		// The URL was checked at start-up; this keeps the password out anyway.
		return fmt.Errorf("parse AMQP URL #%d: %w", (p.next-1)%len(p.urls)+1, RedactURIError(err))
	}
	if p.passwordFile != "" {
		b, err := os.ReadFile(p.passwordFile)
		if err != nil {
			return fmt.Errorf("read AMQP password file: %w", err)
		}
		uri.Password = strings.TrimRight(string(b), "\r\n")
	}
	where := RedactAMQPURI(uri)
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(p.name)
	deadline, _ := ctx.Deadline()
	timeout := 10 * time.Second
	if !deadline.IsZero() {
		timeout = min(timeout, time.Until(deadline))
	}
	conn, err := amqp.DialConfig(uri.String(), amqp.Config{
		Properties: props,
		Heartbeat:  10 * time.Second,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: timeout, KeepAlive: 15 * time.Second}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// A node that accepts TCP but never answers must not hang the
			// handshake: amqp091-go clears this deadline once it is done.
			if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
				_ = c.Close()
				return nil, err
			}
			p.netConn = c
			return c, nil
		},
	})
	if err != nil {
		return fmt.Errorf("connect to %s: %w", where, describeDialError(err, uri))
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("open confirm channel on %s: %w", where, err)
	}
	p.conn, p.ch = conn, ch
	p.connClose = conn.NotifyClose(make(chan *amqp.Error, 1))
	p.blockedCh = conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	p.chClose = ch.NotifyClose(make(chan *amqp.Error, 1))
	p.returns = ch.NotifyReturn(make(chan amqp.Return, p.returnBuffer))
	p.blocked.Store(false)
	p.chErr, p.rowRefused = nil, false
	// Returns of batches that timed out on the old connection.
	clear(p.returned)
	p.log.Info("connected to broker", slog.String("url", where))
	return nil
}

// Close closes the connection, if any. It never fails: a connection that is
// already broken is simply dropped.
func (p *amqpPublisher) Close() {
	if p.conn != nil {
		// A polite close waits for the broker's close-ok; a stalled
		// broker would make it wait forever, so break the socket after a
		// moment.
		t := time.AfterFunc(2*time.Second, func() { _ = p.netConn.Close() })
		_ = p.conn.Close()
		t.Stop()
	}
	p.conn, p.ch, p.checkCh, p.netConn = nil, nil, nil, nil
	clear(p.exchanges)
}

// Blocked reports whether the broker has blocked publishing (a memory or
// disk alarm), after taking in the latest notifications.
func (p *amqpPublisher) Blocked() bool {
	for {
		select {
		case b := <-p.blockedCh:
			p.setBlocked(b)
		default:
			return p.blocked.Load()
		}
	}
}

func (p *amqpPublisher) setBlocked(b amqp.Blocking) {
	if p.blocked.Swap(b.Active) != b.Active {
		if b.Active {
			p.log.Warn("broker blocked publishing, pausing", slog.String("reason", b.Reason))
		} else {
			p.log.Info("broker unblocked publishing, resuming")
		}
	}
}

// closeReason returns why the connection or channel closed, if it did.
func (p *amqpPublisher) closeReason() error {
	if p.chErr == nil {
		select {
		case e := <-p.chClose:
			p.chErr = e
		default:
		}
	}
	if p.chErr != nil {
		return p.chErr
	}
	select {
	case e := <-p.connClose:
		if e != nil {
			return e
		}
	default:
	}
	if !p.Connected() {
		return amqp.ErrClosed
	}
	return nil
}

// channelException returns the error with which the broker closed the
// confirm channel while leaving the connection open, if it did.
func (p *amqpPublisher) channelException() *amqp.Error {
	if p.chErr == nil {
		select {
		case e := <-p.chClose:
			p.chErr = e
		default:
		}
	}
	if p.chErr == nil || !p.chErr.Server || p.conn.IsClosed() {
		return nil
	}
	return p.chErr
}

// exceptionReason maps a channel exception to a failure reason.
func exceptionReason(e *amqp.Error) string {
	switch {
	case e.Code == amqp.NotFound:
		return ReasonExchangeNotFound
	case e.Code == amqp.PreconditionFailed && strings.Contains(e.Reason, "size"):
		// RabbitMQ: "message size N is larger than configured max size M".
		return ReasonTooLarge
	}
	return ReasonInvalid
}
