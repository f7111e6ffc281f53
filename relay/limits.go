package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// What AMQP 0-9-1 can carry. A row that breaks one of these limits must fail
// on its own, before it is sent: amqp091-go shuts the whole connection down
// when it cannot encode a frame (Connection.send runs c.shutdown(FrameError)
// for any write error), and RabbitMQ closes the connection with FRAME_ERROR
// (frame_too_large) when a content header does not fit in one frame. Either
// looks like a broker outage, which costs the row no attempt: the relay would
// reconnect and send the same batch forever.
const (
	// maxShortstr is the longest AMQP short string: exchange, routing key,
	// the string properties (content type, message id, ...) and header keys.
	maxShortstr = 255
	// frameOverhead is what a frame spends around its payload: type (1),
	// channel (2), size (4) and the frame-end octet (1). The negotiated
	// frame_max counts them.
	frameOverhead = 8
	// contentHeaderFixed is the content header's payload before the
	// properties: class id (2), weight (2), body size (8), flags (2).
	contentHeaderFixed = 14
)

// carriable returns why AMQP cannot carry msg published to exchange with
// routing key key over a connection whose frames hold at most frameMax bytes
// (0: no limit), or nil when it can. Field names in the error are the
// columns they come from.
//
// The content header (all properties, headers included) must fit in one
// frame: frameMax minus frameOverhead. RabbitMQ 3.10 accepts up to 8 bytes
// more (it allows for clients that forget the frame's own octets), but the
// specification does not, so neither does the relay. Headers that
// consumers could not read are refused too (see readable).
func carriable(exchange, key string, msg amqp.Publishing, frameMax int) error {
	for _, f := range [...]struct{ name, value string }{
		{"exchange", exchange},
		{"routing_key", key},
		{"content_type", msg.ContentType},
		{"message_id", msg.MessageId},
		{"content_encoding", msg.ContentEncoding},
		{"correlation_id", msg.CorrelationId},
		{"reply_to", msg.ReplyTo},
		{"expiration", msg.Expiration},
		{"type", msg.Type},
		{"user_id", msg.UserId},
		{"app_id", msg.AppId},
	} {
		if len(f.value) > maxShortstr {
			return fmt.Errorf("%s is %d bytes; AMQP short strings hold at most %d", f.name, len(f.value), maxShortstr)
		}
	}
	if err := readable(msg.Headers); err != nil {
		return err
	}
	size, err := contentHeaderSize(msg)
	if err != nil {
		return err
	}
	if frameMax > 0 && size > frameMax-frameOverhead {
		return fmt.Errorf("headers encode to %d bytes; a frame holds %d", size, frameMax-frameOverhead)
	}
	return nil
}

// contentHeaderSize returns the size of the payload of the content header
// frame amqp091-go writes for msg (headerFrame.write in its write.go):
// short strings take a length octet, the headers table a four-octet length,
// and a property is left out when it has its zero value.
func contentHeaderSize(msg amqp.Publishing) (int, error) {
	n := contentHeaderFixed
	for _, s := range [...]string{msg.ContentType, msg.ContentEncoding, msg.CorrelationId, msg.ReplyTo,
		msg.Expiration, msg.MessageId, msg.Type, msg.UserId, msg.AppId} {
		if s != "" {
			n += 1 + len(s)
		}
	}
	if len(msg.Headers) > 0 {
		t, err := tableSize(msg.Headers)
		if err != nil {
			return 0, err
		}
		n += t
	}
	if msg.DeliveryMode > 0 {
		n++
	}
	if msg.Priority > 0 {
		n++
	}
	if !msg.Timestamp.IsZero() {
		n += 8
	}
	return n, nil
}

// tableSize returns the encoded size of an AMQP field table, its length
// prefix included: each entry is a short string key and a field value.
func tableSize(t amqp.Table) (int, error) {
	n := 4
	for k, v := range t {
		if len(k) > maxShortstr {
			return 0, fmt.Errorf("header key %q is %d bytes; AMQP short strings hold at most %d", Clip(k, 40), len(k), maxShortstr)
		}
		f, err := fieldSize(v)
		if err != nil {
			return 0, fmt.Errorf("header %q: %w", Clip(k, 40), err)
		}
		n += 1 + len(k) + f
	}
	return n, nil
}

// fieldSize returns the encoded size of one field value, its type octet
// included, as amqp091-go's writeField encodes it.
func fieldSize(v any) (int, error) {
	switch v := v.(type) {
	case nil:
		return 1, nil // 'V'
	case bool, byte, int8:
		return 2, nil // 't', 'B', 'b'
	case int16, uint16:
		return 3, nil // 's', 'u'
	case int, int32, uint32, float32:
		return 5, nil // 'I', 'i', 'f'
	case int64, float64, time.Time:
		return 9, nil // 'l', 'd', 'T'
	case amqp.Decimal:
		return 6, nil // 'D'
	case string:
		return 5 + len(v), nil // 'S', a long string
	case []byte:
		return 5 + len(v), nil // 'x'
	case []any:
		n := 5 // 'A' and the array's length
		for _, e := range v {
			f, err := fieldSize(e)
			if err != nil {
				return 0, err
			}
			n += f
		}
		return n, nil
	case amqp.Table:
		t, err := tableSize(v)
		return 1 + t, err // 'F'
	}
	return 0, fmt.Errorf("%w: %T", amqp.ErrFieldType, v)
}

// refusedByClient reports whether err, returned at once by
// PublishWithDeferredConfirmWithContext, is amqp091-go refusing to encode
// the message (a short string over 255 bytes, a header of a type it does not
// know): the row's own failure. Anything else, an I/O error under the
// connection, a closed channel or connection, a cancelled context, is not.
//
// amqp091-go's encoding errors are unexported fmt errors (write.go:
// writeShortstr, writeTable), so they are recognised by being none of the
// errors a failing connection returns.
func refusedByClient(err error) bool {
	var (
		ae    *amqp.Error
		ne    net.Error
		errno syscall.Errno
		alert tls.AlertError
	)
	switch {
	case err == nil:
		return false
	case errors.Is(err, amqp.ErrFieldType):
		return true
	case errors.As(err, &ae), // amqp.ErrClosed and the broker's errors
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne), errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &errno), errors.As(err, &alert),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, io.ErrClosedPipe), errors.Is(err, io.ErrShortWrite):
		return false
	}
	return true
}

// maxRefusalText bounds how much of the client library's refusal a
// refusedError shows: amqp091-go quotes the whole offending string, which
// can be megabytes long.
const maxRefusalText = 200

// refusedError is the client library's refusal to encode a row's message,
// shortened in its text and kept whole for errors.Is and errors.As.
type refusedError struct{ err error }

func (e *refusedError) Error() string {
	return "client library refused the message: " + elide(e.err.Error(), maxRefusalText)
}

func (e *refusedError) Unwrap() error { return e.err }

// elide shortens s to at most about n bytes by cutting out its middle, so
// that both the start of a message and its end ("... exceeds 255 bytes")
// survive. A rune cut in two is dropped.
func elide(s string, n int) string {
	if len(s) <= n {
		return s
	}
	head, tail := n*2/3, n/3
	return strings.ToValidUTF8(s[:head], "") + "…" + strings.ToValidUTF8(s[len(s)-tail:], "")
}

// clientRefused reports whether a row of the batch failed because the
// client library refused to encode it (see Send). The library has shut the
// connection down then, and the rows after it are not sent: reconnecting at
// once is right, and the batch need not be isolated, the row is known.
func clientRefused(results []Result) bool {
	for _, r := range results {
		var re *refusedError
		if r.Outcome == Failed && errors.As(r.Err, &re) {
			return true
		}
	}
	return false
}

// dropConnection makes sure the connection is shut down after the client
// library refused a row's message, and waits until it is. amqp091-go shuts
// the connection down after any frame it fails to write, but in a goroutine
// of its own (and not at all when it refused the message before writing,
// e.g. Table.Validate), so the loop could otherwise find the connection
// still open and send the next batch into it. Breaking the socket ends the
// connection either way.
func (p *amqpPublisher) dropConnection(ctx context.Context) {
	closed := p.conn.NotifyClose(make(chan *amqp.Error, 1))
	if p.netConn != nil {
		_ = p.netConn.Close()
	}
	select {
	case <-closed:
	case <-ctx.Done():
	}
}
