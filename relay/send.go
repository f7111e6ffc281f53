package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"
)

// amqpSent is the publisher's record of a batch (batch.sent): the messages
// Check built, and the confirm of each row sent.
type amqpSent struct {
	msgs     []amqp.Publishing
	confirms []*amqp.DeferredConfirmation
	isolate  bool             // sent one message at a time
	missing  map[string]error // exchanges found missing, by name
	span     trace.Span       // the publish span; nil when tracing is off
}

// Prepare readies a batch for Check and Send: it passively declares the
// exchanges of its rows not seen recently. An error means nothing of the
// batch can be sent now.
func (p *amqpPublisher) Prepare(_ context.Context, b *batch) error {
	if !p.Connected() {
		return errors.New("not connected to broker")
	}
	missing, err := p.missingExchanges(b.rows)
	if err != nil {
		return err
	}
	b.sent = &amqpSent{msgs: make([]amqp.Publishing, len(b.rows)), confirms: make([]*amqp.DeferredConfirmation, len(b.rows)),
		missing: missing}
	return nil
}

// Check builds the message of row i, or fails it in b.results if the client
// library or the broker would refuse it: a payload over MaxMessageSize,
// headers that cannot be mapped, a message AMQP cannot carry over this
// connection (see carriable), an exchange that does not exist. A deferred
// row (claimed without its payload) is only checked for its size: it is
// not sent.
func (p *amqpPublisher) Check(b *batch, i int) bool {
	s := b.sent.(*amqpSent)
	r := &b.rows[i]
	if r.deferred {
		res, ok := p.sizeOK(r)
		if !ok {
			b.results[i] = res
		}
		return ok
	}
	msg, res, ok := p.check(r)
	if ok {
		res, ok = missingResult(r, s.missing)
	}
	if !ok {
		b.results[i] = res
		return false
	}
	s.msgs[i] = msg
	return true
}

// Send publishes the rows b.send marks, in order, without waiting for
// confirms; Await them later. Up to two batches may be in flight, awaited
// in the order they were sent. It stops at the first row it cannot send.
// After a channel closed over one message the broker did not name, a batch
// goes out one message at a time, each awaited, to find that message.
func (p *amqpPublisher) Send(ctx context.Context, b *batch) {
	s, _ := b.sent.(*amqpSent)
	if s == nil {
		b.err = errors.New("batch not prepared")
		return
	}
	defer func() { s.msgs = nil }() // the payloads: sent, or read again when claimed again
	s.isolate = p.isolate
	s.span = p.startSpan(ctx, b, s)
	wd := p.wd
	if c := p.cork; c != nil && !s.isolate {
		// One write for the batch, not one per message (see corkConn).
		c.cork()
		defer func() {
			if err := c.uncork(); err != nil && b.err == nil {
				b.err = fmt.Errorf("publish: %w", err)
			}
		}()
	}
	for i := range b.rows {
		if !b.send[i] {
			continue
		}
		if now := time.Now(); !b.sendBy.IsZero() && now.After(b.sendBy) {
			// Started in time, ran late: not a row more (see sendInTime).
			b.err = b.abandonFrom(i, now)
			return
		}
		r := &b.rows[i]
		wd.sent()
		dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, r.Exchange, r.RoutingKey, p.mandatoryFor(r.Exchange), false, s.msgs[i])
		if err != nil {
			wd.confirmed()
			if refusedByClient(err) {
				// The client library could not encode this row (Check
				// should have caught it) and has shut the connection
				// down under it: the row fails, the rows after it stay
				// unsent, and the loop reconnects at once.
				err = &refusedError{err: err}
				b.results[i] = failed(r, ReasonInvalid, err)
				p.rowRefused = true
				p.dropConnection(ctx)
			}
			b.err = fmt.Errorf("publish: %w", err)
			return
		}
		s.confirms[i] = dc
		if !s.isolate {
			continue
		}
		if !wd.wait(dc) {
			return
		}
		if !dc.Acked() {
			if e := p.channelException(); e != nil {
				// The broker closed the channel over this very message.
				b.results[i] = failed(r, exceptionReason(e), fmt.Errorf("broker closed the channel: %w", e))
				s.confirms[i] = nil
				return
			}
		}
	}
}

// Await waits for the confirms of a batch sent with Send and fills in one
// result per row sent. A non-nil error means the connection or channel
// failed and must be reconnected; rows whose fate is unknown are NotSent.
func (p *amqpPublisher) Await(b *batch) error {
	s, _ := b.sent.(*amqpSent)
	if s == nil {
		return b.err
	}
	wd := p.wd
	for _, dc := range s.confirms {
		if dc != nil && !wd.wait(dc) {
			break
		}
	}
	killed := wd.killedBy()

	ackedAt := time.Now()
	closed := p.closeReason()
	for i, dc := range s.confirms {
		if dc == nil {
			continue
		}
		row := &b.rows[i]
		select {
		case <-dc.Done():
		default:
			wd.confirmed()
			b.results[i] = Result{Row: row, Outcome: NotSent, Reason: ReasonTimeout, Err: killed}
			continue
		}
		switch {
		case dc.Acked():
			b.results[i] = Result{Row: row, Outcome: Acked, AckedAt: ackedAt}
		case closed != nil || killed != nil:
			// Deferred confirms of a closed channel read as nacks; the
			// broker never said anything about these rows.
			b.results[i] = Result{Row: row, Outcome: NotSent, Reason: ReasonChannelClosed, Err: cmp.Or(closed, killed)}
		default:
			b.results[i] = failed(row, ReasonNack, errors.New("broker nacked the message"))
		}
	}
	p.matchReturns(b.results)
	endSpan(s.span, b.results)

	switch {
	case killed != nil:
		p.Close()
		return killed
	case closed != nil:
		var ae *amqp.Error
		if errors.As(closed, &ae) && ae.Code == amqp.NotFound {
			// An exchange vanished after it was cached: check again next time.
			clear(p.exchanges)
		}
		// A channel the broker closed over one message it refused, not
		// telling which: find it by sending the next batch one by one.
		// A row the client library refused (see Send) is known already.
		refused := clientRefused(b.results)
		p.rowRefused = refused || p.channelException() != nil
		p.isolate = !s.isolate && !refused && p.rowRefused
		return fmt.Errorf("channel closed: %w", closed)
	}
	p.isolate = false
	return b.err
}

// RowRefused reports whether the last channel close was the broker (or the
// client library) refusing one message while the connection stayed up.
func (p *amqpPublisher) RowRefused() bool { return p.rowRefused }

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

// check builds the message for a row, or fails a row that the client
// library or the broker would refuse, before it is sent: a payload over
// MaxMessageSize, headers that cannot be mapped, or a message AMQP cannot
// carry over this connection (see carriable). A row whose expiration ran
// out fails to be parked at once (reason expired).
func (p *amqpPublisher) check(r *Row) (amqp.Publishing, Result, bool) {
	if res, ok := p.sizeOK(r); !ok {
		return amqp.Publishing{}, res, false
	}
	msg, err := r.publishing(p.appID, time.Now())
	if errors.Is(err, errExpired) {
		res := failed(r, ReasonExpired, err)
		res.Park = true
		return amqp.Publishing{}, res, false
	}
	if err == nil {
		err = carriable(r.Exchange, r.RoutingKey, msg, p.conn.Config.FrameSize)
	}
	if err != nil {
		return amqp.Publishing{}, failed(r, ReasonInvalid, err), false
	}
	return msg, Result{}, true
}

// sizeOK fails a row whose payload, loaded or not, is over MaxMessageSize.
func (p *amqpPublisher) sizeOK(r *Row) (Result, bool) {
	if n := max(r.size, len(r.Payload)); n > p.maxMessageSize {
		return failed(r, ReasonTooLarge, fmt.Errorf("payload of %d bytes is larger than the %d bytes allowed (OUTBOX_MAX_MESSAGE_SIZE)",
			n, p.maxMessageSize)), false
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
		// A name AMQP cannot carry is never declared: amqp091-go would shut
		// the connection down over it. check fails its rows as invalid.
		if ex == "" || missing[ex] != nil || len(ex) > maxShortstr {
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
