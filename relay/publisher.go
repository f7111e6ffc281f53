package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
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

// splitURLs splits a comma-separated list of broker URLs.
func splitURLs(s string) []string {
	var urls []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return urls
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

// inflight is a batch sent and not yet awaited.
type inflight struct {
	rows     []Row
	results  []Result
	confirms []*amqp.DeferredConfirmation
	wd       *watchdog
	isolate  bool
	err      error // why sending stopped early
}

// heldKeys returns the partition keys of rows of the batch that failed or
// were held back before they were sent.
func (f *inflight) heldKeys(into map[string]bool) {
	for i, r := range f.results {
		if f.confirms[i] == nil && (r.Outcome == Failed || r.Reason == reasonHeld) && r.Row.PartitionKey != nil {
			into[*r.Row.PartitionKey] = true
		}
	}
}

// Send publishes every row of the batch without waiting for confirms, except
// rows the broker would refuse (they fail now) and rows whose partition_key
// is in held or failed earlier in this batch (they stay unsent, so that
// per-key order holds). Await its confirms later; up to two batches may be
// in flight, awaited in the order they were sent. wd (see watch) bounds the
// wait.
func (p *amqpPublisher) Send(ctx context.Context, rows []Row, held map[string]bool, wd *watchdog) *inflight {
	f := &inflight{rows: rows, results: make([]Result, len(rows)), confirms: make([]*amqp.DeferredConfirmation, len(rows)), wd: wd}
	for i := range rows {
		f.results[i] = Result{Row: &rows[i], Outcome: NotSent, Reason: ReasonChannelClosed}
	}
	if !p.Connected() {
		f.err = errors.New("not connected to broker")
		return f
	}
	missing, err := p.missingExchanges(rows)
	if err != nil {
		f.err = err
		return f
	}
	f.isolate = p.isolate
	hold := make(map[string]bool, len(held))
	for k := range held {
		hold[k] = true
	}
	for i := range rows {
		r := &rows[i]
		if r.PartitionKey != nil && hold[*r.PartitionKey] {
			f.results[i] = Result{Row: r, Outcome: NotSent, Reason: reasonHeld}
			continue
		}
		res, ok := p.check(r)
		if ok {
			res, ok = missingResult(r, missing)
		}
		var msg amqp.Publishing
		if ok {
			var err error
			if msg, err = r.publishing(); err != nil {
				res, ok = failed(r, ReasonInvalid, err), false
			}
		}
		if !ok {
			f.results[i] = res
			if r.PartitionKey != nil {
				hold[*r.PartitionKey] = true
			}
			continue
		}
		wd.sent()
		dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, r.Exchange, r.RoutingKey, p.mandatory, false, msg)
		if err != nil {
			wd.confirmed()
			f.err = fmt.Errorf("publish: %w", err)
			break
		}
		f.confirms[i] = dc
		if f.isolate && !wd.wait(dc) {
			break
		}
		if f.isolate && !dc.Acked() {
			if e := p.channelException(); e != nil {
				// The broker closed the channel over this very message.
				f.results[i] = failed(r, exceptionReason(e), fmt.Errorf("broker closed the channel: %w", e))
				f.confirms[i] = nil
				break
			}
		}
	}
	return f
}

// Await waits for the confirms of a batch sent with Send and returns one
// result per row, in order. A non-nil error means the connection or channel
// failed and must be reconnected; rows whose fate is unknown are NotSent.
func (p *amqpPublisher) Await(f *inflight) ([]Result, error) {
	for _, dc := range f.confirms {
		if dc != nil && !f.wd.wait(dc) {
			break
		}
	}
	killed := f.wd.killedBy()

	ackedAt := time.Now()
	closed := p.closeReason()
	for i, dc := range f.confirms {
		if dc == nil {
			continue
		}
		row := &f.rows[i]
		select {
		case <-dc.Done():
		default:
			f.wd.confirmed()
			f.results[i] = Result{Row: row, Outcome: NotSent, Reason: ReasonTimeout, Err: killed}
			continue
		}
		switch {
		case dc.Acked():
			f.results[i] = Result{Row: row, Outcome: Acked, AckedAt: ackedAt}
		case closed != nil || killed != nil:
			// Deferred confirms of a closed channel read as nacks; the
			// broker never said anything about these rows.
			f.results[i] = Result{Row: row, Outcome: NotSent, Reason: ReasonChannelClosed, Err: cmp.Or(closed, killed)}
		default:
			f.results[i] = failed(row, ReasonNack, errors.New("broker nacked the message"))
		}
	}
	p.matchReturns(f.results)

	switch {
	case killed != nil:
		p.Close()
		return f.results, killed
	case closed != nil:
		var ae *amqp.Error
		if errors.As(closed, &ae) && ae.Code == amqp.NotFound {
			// An exchange vanished after it was cached: check again next time.
			clear(p.exchanges)
		}
		// A channel the broker closed over one message it refused, not
		// telling which: find it by sending the next batch one by one.
		p.rowRefused = p.channelException() != nil
		p.isolate = !f.isolate && p.rowRefused
		return f.results, fmt.Errorf("channel closed: %w", closed)
	}
	p.isolate = false
	return f.results, f.err
}

// watchdog bounds the wait for confirms while batches are in flight: when
// messages are outstanding and no confirm has come for the confirm timeout
// (time the broker spends blocked by a resource alarm does not count), or
// when ctx is done, it breaks the TCP connection under the client. That ends
// even a write stalled on a hung broker; unconfirmed rows then count as not
// sent.
type watchdog struct {
	timeout     time.Duration
	outstanding atomic.Int64
	last        atomic.Int64 // unix nanoseconds of the last progress
	done        chan struct{}
	killed      chan struct{}
	wg          sync.WaitGroup
	reason      error // set before killed is closed
}

// watch starts a watchdog for the batches sent until its stop.
func (p *amqpPublisher) watch(ctx context.Context) *watchdog {
	w := &watchdog{timeout: p.confirmTimeout, done: make(chan struct{}), killed: make(chan struct{})}
	w.touch()
	nc, blockedCh := p.netConn, p.blockedCh
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tick := time.NewTicker(min(w.timeout/10, 100*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-w.done:
				return
			case b := <-blockedCh:
				p.setBlocked(b)
				w.touch()
				continue
			case <-tick.C:
				if p.blocked.Load() || w.outstanding.Load() <= 0 {
					w.touch()
					continue
				}
				if time.Since(time.Unix(0, w.last.Load())) < w.timeout {
					continue
				}
				w.reason = fmt.Errorf("no confirms within %s", w.timeout)
			case <-ctx.Done():
				w.reason = fmt.Errorf("batch abandoned: %w", context.Cause(ctx))
			}
			close(w.killed)
			if nc != nil {
				_ = nc.Close()
			}
			return
		}
	}()
	return w
}

func (w *watchdog) touch()     { w.last.Store(time.Now().UnixNano()) }
func (w *watchdog) sent()      { w.outstanding.Add(1) }
func (w *watchdog) confirmed() { w.outstanding.Add(-1); w.touch() }

// wait waits for dc and reports whether it resolved (false: the watchdog
// broke the connection first).
func (w *watchdog) wait(dc *amqp.DeferredConfirmation) bool {
	select {
	case <-dc.Done():
		w.confirmed()
		return true
	case <-w.killed:
		return false
	}
}

// killedBy returns why the watchdog broke the connection, if it did.
func (w *watchdog) killedBy() error {
	select {
	case <-w.killed:
		return w.reason
	default:
		return nil
	}
}

// stop stops the watchdog and waits for it.
func (w *watchdog) stop() {
	close(w.done)
	w.wg.Wait()
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

// matchReturns marks acked rows the broker returned as unroutable. RabbitMQ
// sends basic.return before the basic.ack of the same message, and the
// client queues returns before it processes the next frame, so every return
// of a batch is buffered by the time its confirms are in. Returns of the
// other batch in flight are kept for its Await.
func (p *amqpPublisher) matchReturns(results []Result) {
	for drained := false; !drained; {
		select {
		case ret, ok := <-p.returns:
			if !ok {
				// Closed with the channel: no more returns.
				drained = true
				break
			}
			p.returned[ret.MessageId] = append(p.returned[ret.MessageId], ret)
		default:
			drained = true
		}
	}
	for i := range results {
		r := &results[i]
		rets := p.returned[r.Row.MessageID]
		if r.Outcome != Acked || len(rets) == 0 {
			continue
		}
		ret := rets[0]
		if len(rets) == 1 {
			delete(p.returned, r.Row.MessageID)
		} else {
			p.returned[r.Row.MessageID] = rets[1:]
		}
		*r = failed(r.Row, ReasonReturned, fmt.Errorf("returned by broker: %d %s (exchange %q, routing key %q)",
			ret.ReplyCode, ret.ReplyText, r.Row.Exchange, r.Row.RoutingKey))
	}
}

// missingResult fails a row whose exchange does not exist.
func missingResult(r *Row, missing map[string]error) (Result, bool) {
	if e, ok := missing[r.Exchange]; ok {
		return failed(r, ReasonExchangeNotFound, e), false
	}
	return Result{}, true
}

// check fails a row the broker would refuse, before it is sent.
func (p *amqpPublisher) check(r *Row) (Result, bool) {
	if len(r.Payload) > p.maxMessageSize {
		return failed(r, ReasonTooLarge, fmt.Errorf("payload of %d bytes is larger than the %d bytes allowed (OUTBOX_MAX_MESSAGE_SIZE)",
			len(r.Payload), p.maxMessageSize)), false
	}
	return Result{}, true
}

func failed(r *Row, reason string, err error) Result {
	return Result{Row: r, Outcome: Failed, Reason: reason, Err: err}
}

// missingExchanges passively declares every exchange of the batch that was
// not seen recently and returns those the broker does not know. Publishing
// to one of them would close the channel under the rest of the batch.
func (p *amqpPublisher) missingExchanges(rows []Row) (map[string]error, error) {
	var missing map[string]error
	now := time.Now()
	for i := range rows {
		ex := rows[i].Exchange
		if ex == "" || missing[ex] != nil {
			continue
		}
		if seen, ok := p.exchanges[ex]; ok && now.Sub(seen) < exchangeCacheTTL {
			continue
		}
		if p.checkCh == nil || p.checkCh.IsClosed() {
			ch, err := p.conn.Channel()
			if err != nil {
				return nil, fmt.Errorf("open exchange-check channel: %w", err)
			}
			p.checkCh = ch
		}
		err := p.checkCh.ExchangeDeclarePassive(ex, "direct", false, false, false, false, nil)
		var ae *amqp.Error
		switch {
		case err == nil:
			p.exchanges[ex] = now
		case errors.As(err, &ae) && ae.Code == amqp.NotFound:
			if missing == nil {
				missing = make(map[string]error)
			}
			missing[ex] = fmt.Errorf("exchange %q does not exist", ex)
			p.checkCh = nil // the broker closed it
		default:
			return nil, fmt.Errorf("check exchange %q: %w", ex, err)
		}
	}
	return missing, nil
}

// RedactAMQPURI formats uri without its password, for logs and errors. The
// password shows as "xxxxx" ("guest:@" read as an empty password).
func RedactAMQPURI(uri amqp.URI) string {
	if uri.Password != "" {
		uri.Password = "xxxxx"
	}
	return uri.String()
}

// RedactURIError keeps only the kind of parse error: url.Parse errors echo
// the URL, password included. amqp091-go's URI errors are unexported, so the
// kind is read from the text, as a last resort.
func RedactURIError(err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "scheme"):
		return errors.New("scheme must be amqp:// or amqps://")
	case strings.Contains(msg, "whitespace"):
		return errors.New("URL must not contain whitespace")
	}
	return errors.New("malformed URL (want amqp://user:password@host:port/vhost)")
}

// describeDialError makes the broker's terse refusals say what to check. The
// broker reports both a bad vhost and bad credentials as ACCESS_REFUSED and
// tells them apart only in its reply text.
func describeDialError(err error, uri amqp.URI) error {
	var ae *amqp.Error
	if !errors.As(err, &ae) {
		return err
	}
	switch {
	case strings.Contains(ae.Reason, "vhost") || ae.Code == amqp.NotAllowed:
		return fmt.Errorf("%w (check that vhost %q exists and user %q may use it)", err, uri.Vhost, uri.Username)
	case ae.Code == amqp.AccessRefused:
		return fmt.Errorf("%w (check user %q and its password)", err, uri.Username)
	}
	return err
}
