package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

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
		if r.deferred {
			// Claimed without its payload: past the batch's byte bound,
			// held like a row behind a failed one; over MaxMessageSize,
			// failed unread (as check would). The rest of its key waits.
			f.results[i] = Result{Row: r, Outcome: NotSent, Reason: reasonHeld}
			if res, ok := p.sizeOK(r); !ok {
				f.results[i] = res
			}
			if r.PartitionKey != nil {
				hold[*r.PartitionKey] = true
			}
			continue
		}
		msg, res, ok := p.check(r)
		if ok {
			res, ok = missingResult(r, missing)
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
			if refusedByClient(err) {
				// The client library could not encode this row (check
				// should have caught it) and has shut the connection
				// down under it: the row fails, the rows after it stay
				// unsent, and the loop reconnects at once.
				err = &refusedError{err: err}
				f.results[i] = failed(r, ReasonInvalid, err)
				p.rowRefused = true
				p.dropConnection(ctx)
			}
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
		// A row the client library refused (see Send) is known already.
		refused := f.clientRefused()
		p.rowRefused = refused || p.channelException() != nil
		p.isolate = !f.isolate && !refused && p.rowRefused
		return f.results, fmt.Errorf("channel closed: %w", closed)
	}
	p.isolate = false
	return f.results, f.err
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

// check builds the message for a row, or fails a row that the client
// library or the broker would refuse, before it is sent: a payload over
// MaxMessageSize, headers that cannot be mapped, or a message AMQP cannot
// carry over this connection (see carriable).
func (p *amqpPublisher) check(r *Row) (amqp.Publishing, Result, bool) {
	if res, ok := p.sizeOK(r); !ok {
		return amqp.Publishing{}, res, false
	}
	msg, err := r.publishing()
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
