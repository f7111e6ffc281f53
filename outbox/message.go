package outbox

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"
)

// Message is one event to enqueue. Every zero value means "use the table's
// default", except that a message to the default exchange (Exchange "")
// needs a RoutingKey: the queue's name.
type Message struct {
	// Exchange is the AMQP exchange to publish to. Defaults to "", the
	// broker's default exchange, which routes by queue name. At most 255
	// bytes.
	Exchange string
	// RoutingKey is the AMQP routing key; at most 255 bytes. It may be
	// empty for a named exchange (fanout and headers exchanges ignore it),
	// not for the default exchange.
	RoutingKey string
	// PartitionKey orders messages: rows with the same key are published in
	// the order they were inserted. Use an aggregate id such as "order-42".
	// Empty means unordered (SQL null). At most 1024 bytes
	// (schema.MaxPartitionKey): the key must fit an index entry.
	PartitionKey string
	// MessageID becomes the AMQP message-id, stable across re-publishes so
	// that consumers can de-duplicate. The zero value lets the database
	// generate a random one (gen_random_uuid()); Enqueue returns it.
	MessageID MessageID
	// ContentType is the AMQP content-type, e.g. "application/json". Empty
	// means none (SQL null). At most 255 bytes.
	ContentType string
	// Headers become the AMQP headers table. They are stored as a jsonb
	// object and mapped back by the relay; see "Headers" in the package
	// documentation for the values that survive the trip. Nil means none.
	// When ctx holds a span, Enqueue adds its W3C traceparent and
	// tracestate (see "Tracing" in the package documentation).
	Headers map[string]any
	// Payload is the message body. Nil is stored as an empty body.
	Payload []byte
	// AvailableAt delays publishing until that time. The zero value means
	// now (the time the transaction started, like created_at).
	AvailableAt time.Time

	// The AMQP properties below are sent as such; empty (zero) means none
	// (SQL null). They need the table at migration 005 or later; a batch
	// that sets none of them also goes into an older table.

	// Type is the AMQP type: the event's name, e.g. "order.paid". At most
	// 255 bytes, as are the other strings below.
	Type string
	// CorrelationID is the AMQP correlation-id (request/reply, sagas).
	CorrelationID string
	// ReplyTo is the AMQP reply-to: where a reply should go.
	ReplyTo string
	// Expiration is the message's time to live, counted from created_at
	// (the enqueuing transaction's start). The relay sends what remains of
	// it as the AMQP expiration, in milliseconds, and parks a row whose
	// time ran out before it was published as dead (reason expired).
	// Negative is refused.
	Expiration time.Duration
	// Priority is the AMQP priority, 1-255 (queues honour up to their
	// x-max-priority); 0 sends none, which consumers read as 0.
	Priority uint8
	// ContentEncoding is the AMQP content-encoding, e.g. "gzip".
	ContentEncoding string
	// AppID is the AMQP app-id. Empty leaves it to the relay's
	// OUTBOX_APP_ID, if set.
	AppID string
}

// hasProperties reports whether m sets an AMQP property of migration 005.
func (m *Message) hasProperties() bool {
	return m.Type != "" || m.CorrelationID != "" || m.ReplyTo != "" || m.Expiration != 0 ||
		m.Priority != 0 || m.ContentEncoding != "" || m.AppID != ""
}

// MessageID is a UUID identifying a message. Its layout is that of other Go
// UUID types (e.g. github.com/google/uuid.UUID), so they convert directly:
// outbox.MessageID(u).
type MessageID [16]byte

// NewMessageID returns a random (version 4) MessageID, for callers who want
// to know a message's id before enqueuing it.
func NewMessageID() MessageID {
	var id MessageID
	_, _ = rand.Read(id[:])   // never returns an error (see crypto/rand.Read)
	id[6] = id[6]&0x0f | 0x40 // version 4
	id[8] = id[8]&0x3f | 0x80 // RFC 9562 variant
	return id
}

// ParseMessageID parses the canonical form
// xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits in either case).
func ParseMessageID(s string) (MessageID, error) {
	var id MessageID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return id, fmt.Errorf("outbox: parse message id %.40q: want xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	src := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
	if _, err := hex.Decode(id[:], []byte(src)); err != nil {
		return MessageID{}, fmt.Errorf("outbox: parse message id %q: %w", s, err)
	}
	return id, nil
}

// String returns the canonical lower-case form, e.g.
// "2f1d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b".
func (id MessageID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], id[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], id[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], id[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], id[8:10])
	b[23] = '-'
	hex.Encode(b[24:], id[10:])
	return string(b[:])
}

// IsZero reports whether id is the zero value, which Enqueue replaces with
// a random id.
func (id MessageID) IsZero() bool { return id == MessageID{} }

// MarshalText implements encoding.TextMarshaler with the canonical form, so
// ids read well in JSON and logs.
func (id MessageID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; see ParseMessageID.
func (id *MessageID) UnmarshalText(b []byte) error {
	v, err := ParseMessageID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}
