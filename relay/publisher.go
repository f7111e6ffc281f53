package relay

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"
)

// exchangeCacheTTL is how long an exchange seen to exist is trusted without
// another passive declare. An exchange deleted within that time closes the
// channel under its batch; the batch is then not sent, the cache is dropped,
// and the next attempt finds the missing exchange.
const exchangeCacheTTL = 30 * time.Second

// amqpPublisher is the AMQP side of the relay: one connection, one channel in
// confirm mode, and a second channel for passive exchange checks (a failed
// check closes the channel it ran on). The loop's goroutine uses it; two
// goroutines of its own read what they need of it: the watchdog (see Watch)
// reads blocked and breaks the socket it was given, and the goroutine that
// follows the connection's blocked notifications (see Connect) owns
// blocked.
type amqpPublisher struct {
	uris           []amqp.URI // parsed once, in New
	passwordFile   string
	tls            brokerTLS
	name           string
	mandatory      bool
	notMandatory   []string // exchange patterns published without mandatory all the same
	confirmTimeout time.Duration
	maxMessageSize int
	returnBuffer   int
	appID          string       // AppId of rows that have none
	tracer         trace.Tracer // publish spans; nil when tracing is off
	log            *slog.Logger

	next        int       // index into uris of the node to dial next
	netConn     net.Conn  // the TCP connection under conn, to break a stalled write
	cork        *corkConn // netConn as conn writes to it: Send holds a batch's writes back
	conn        *amqp.Connection
	ch          *amqp.Channel
	checkCh     *amqp.Channel
	connClose   chan *amqp.Error
	chClose     chan *amqp.Error
	chErr       *amqp.Error        // what chClose delivered, kept
	blockedCh   chan amqp.Blocking // conn's blocked notifications, read by followBlocked alone
	blockedDone chan struct{}      // closed when the blocked follower of conn returned
	blocked     atomic.Bool        // the broker blocked publishing (resource alarm)
	returns     chan amqp.Return
	wd          *watchdog                // bounds the waits of the drain under way (see Watch)
	exchanges   map[string]time.Time     // exchange → when it was last seen to exist
	returned    map[string][]amqp.Return // message id → returns not yet matched to a row
	// isolate makes the next batch go out one message at a time: the broker
	// closed the channel over one message of the last batch (e.g. one larger
	// than its max_message_size) without saying which.
	isolate bool
	// rowRefused says the last channel close was the broker refusing a
	// message (a channel exception, the connection alive): reconnecting at
	// once is right, the broker is fine.
	rowRefused bool
}

func newPublisher(cfg Config, uris []amqp.URI, name string) *amqpPublisher {
	return &amqpPublisher{
		uris:           uris,
		passwordFile:   cfg.AMQPPasswordFile,
		tls:            newBrokerTLS(cfg),
		name:           name,
		mandatory:      !cfg.AllowUnroutable,
		notMandatory:   cfg.MandatoryExcept,
		confirmTimeout: cfg.ConfirmTimeout,
		maxMessageSize: cfg.MaxMessageSize,
		returnBuffer:   cfg.BatchSize + 16,
		appID:          cfg.AppID,
		tracer:         cfg.tracer(),
		log:            cfg.Logger,
		exchanges:      make(map[string]time.Time),
		returned:       make(map[string][]amqp.Return),
	}
}

// mandatoryFor reports whether a message to exchange goes with the
// mandatory flag (see Config.MandatoryExcept).
func (p *amqpPublisher) mandatoryFor(exchange string) bool {
	if !p.mandatory {
		return false
	}
	for _, pat := range p.notMandatory {
		if ok, _ := path.Match(pat, exchange); ok {
			return false
		}
	}
	return true
}

// Connected reports whether the connection and confirm channel are up.
func (p *amqpPublisher) Connected() bool {
	return p.conn != nil && !p.conn.IsClosed() && p.ch != nil && !p.ch.IsClosed()
}

// StartAt makes the next Connect dial node i of the list (modulo its
// length): relays spread over a cluster by their rank.
func (p *amqpPublisher) StartAt(i int) { p.next = i }

// Node returns the host and port of the node last dialled.
func (p *amqpPublisher) Node() string {
	u := p.uris[(p.next+len(p.uris)-1)%len(p.uris)]
	return net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
}

// Connect dials the next node (after closing what is left of an earlier
// connection) and opens the confirm channel. Each call tries one node, so the
// caller's back-off paces failover through the list.
func (p *amqpPublisher) Connect(ctx context.Context) error {
	p.Close()
	uri := p.uris[p.next%len(p.uris)]
	p.next++
	// With SASL EXTERNAL alone the client certificate is the identity:
	// no password to read.
	if p.passwordFile != "" && !externalOnly(uri) {
		b, err := os.ReadFile(p.passwordFile)
		if err != nil {
			return fmt.Errorf("read AMQP password file: %w", err)
		}
		uri.Password = strings.TrimRight(string(b), "\r\n")
	}
	where := RedactAMQPURI(uri)
	var tlsConfig *tls.Config
	if uri.Scheme == "amqps" {
		// Read at every connect: certificates rotate.
		c, err := p.tls.config(uri)
		if err != nil {
			return fmt.Errorf("TLS for %s: %w", where, err)
		}
		tlsConfig = c
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(p.name)
	deadline, _ := ctx.Deadline()
	timeout := 10 * time.Second
	if !deadline.IsZero() {
		timeout = min(timeout, time.Until(deadline))
	}
	// uri.String() drops auth_mechanism, so the mechanisms are passed
	// here; a TLSClientConfig makes amqp091-go ignore the URL's TLS
	// parameters, which tlsConfig has read where no variable overrides them.
	conn, err := amqp.DialConfig(uri.String(), amqp.Config{
		SASL:            saslMechanisms(uri),
		TLSClientConfig: tlsConfig,
		Properties:      props,
		Heartbeat:       10 * time.Second,
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
			p.netConn, p.cork = c, newCorkConn(c)
			return p.cork, nil
		},
	})
	if err != nil {
		return fmt.Errorf("connect to %s: %w", where, describeDialError(err, uri, p.tls))
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
	p.chClose = ch.NotifyClose(make(chan *amqp.Error, 1))
	p.returns = ch.NotifyReturn(make(chan amqp.Return, p.returnBuffer))
	p.blocked.Store(false)
	p.blockedDone = make(chan struct{})
	p.blockedCh = conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	go p.followBlocked(p.blockedCh, p.blockedDone)
	p.chErr, p.rowRefused = nil, false
	// Returns of batches that timed out on the old connection.
	clear(p.returned)
	p.log.Info("connected to broker", slog.String("url", where))
	return nil
}

// Close closes the connection, if any, and waits for its blocked
// follower. It never fails: a connection that is already broken is simply
// dropped.
func (p *amqpPublisher) Close() {
	if p.conn != nil {
		// A polite close waits for the broker's close-ok; a stalled
		// broker would make it wait forever, so break the socket after a
		// moment.
		nc := p.netConn
		t := time.AfterFunc(2*time.Second, func() {
			if nc != nil {
				_ = nc.Close()
			}
		})
		_ = p.conn.Close()
		t.Stop()
		// The library closes the blocked channel as the connection ends,
		// which ends the follower.
		<-p.blockedDone
	}
	p.conn, p.ch, p.checkCh, p.netConn, p.cork = nil, nil, nil, nil, nil
	clear(p.exchanges)
}

// Blocked reports whether the broker has blocked publishing (a memory or
// disk alarm).
func (p *amqpPublisher) Blocked() bool { return p.blocked.Load() }

// followBlocked records the connection's blocked and unblocked
// notifications until the library closes ch with the connection. It is
// the only writer of p.blocked while the connection lives.
func (p *amqpPublisher) followBlocked(ch <-chan amqp.Blocking, done chan<- struct{}) {
	defer close(done)
	for b := range ch {
		if p.blocked.Swap(b.Active) == b.Active {
			continue
		}
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
