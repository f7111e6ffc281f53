package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/schema"
)

// Row is one claimed outbox row.
type Row struct {
	ID           int64
	Exchange     string
	RoutingKey   string
	PartitionKey *string
	MessageID    string
	ContentType  *string
	Headers      []byte // raw JSON object, nil for SQL null
	Payload      []byte
	CreatedAt    time.Time
	Attempts     int

	// The AMQP properties of migration 005; nil for SQL null (and on a
	// table without those columns).
	Type            *string
	CorrelationID   *string
	ReplyTo         *string
	Priority        *int16
	ContentEncoding *string
	AppID           *string
	// ExpiresAt is when the row's expiration runs out, by the relay's
	// clock (computed from what the database said was left at the claim);
	// the zero time when it has none.
	ExpiresAt time.Time

	// deferred marks a row claimed without its payload (see claimQuery):
	// past the batch's byte bound, it is not published with this batch
	// and is claimed again when the batch is settled; larger than
	// MaxMessageSize, it fails unread.
	deferred bool
	size     int // bytes of the payload, loaded or not
}

// Outcome is what became of one published row.
type Outcome int

const (
	// NotSent: the row's fate is unknown (connection lost, shutdown, timeout
	// of the whole batch). It stays as it is and is claimed again; this is
	// not the row's fault, so it does not count as an attempt.
	NotSent Outcome = iota
	// Acked: the broker confirmed the row; it is deleted.
	Acked
	// Failed: the row itself was refused (nack, returned, missing exchange,
	// headers or size the broker cannot take). It counts as an attempt.
	Failed
)

// Failure reasons, the values of the reason label of
// outbox_publish_failures_total.
const (
	ReasonNack             = "nack"
	ReasonReturned         = "returned"
	ReasonExchangeNotFound = "exchange_not_found"
	ReasonInvalid          = "invalid"
	ReasonTooLarge         = "too_large"
	ReasonTimeout          = "timeout"
	ReasonChannelClosed    = "channel_closed"
	// ReasonExpired: the row's expiration ran out before it was
	// published. It is parked dead at once, whatever its attempts.
	ReasonExpired = "expired"
	// ReasonClaimTooOld: the row was not sent because its claim passed
	// the claim age bound first (see sendInTime); not an attempt.
	ReasonClaimTooOld = "claim_too_old"

	// reasonHeld marks a NotSent row held back behind an earlier row of
	// its partition_key that failed in the same batch; not a failure.
	reasonHeld = "held"
)

// Result is the outcome of publishing one row.
type Result struct {
	Row     *Row
	Outcome Outcome
	Reason  string // one of the Reason constants when Outcome is Failed or NotSent
	Err     error  // why, when not Acked; becomes last_error for Failed rows
	AckedAt time.Time
	// Park marks a Failed row to be parked dead now rather than retried.
	Park bool
}

// errInvalidHeaders marks rows whose headers column cannot be turned into an
// AMQP table.
var errInvalidHeaders = errors.New("invalid headers")

// errExpired marks a row whose expiration ran out before it was published.
var errExpired = errors.New("expired before it was published")

// publishing builds the AMQP message for r at now. Timestamp is created_at,
// MessageId the message_id column, and delivery is persistent; the other
// properties come from their columns, AppId from appID when the row has
// none, and Expiration is what remains of the row's, in whole milliseconds
// (rounded up). A row whose expiration ran out is errExpired.
func (r *Row) publishing(appID string, now time.Time) (amqp.Publishing, error) {
	h, err := decodeHeaders(r.Headers)
	if err != nil {
		return amqp.Publishing{}, err
	}
	p := amqp.Publishing{
		Headers:         h,
		DeliveryMode:    amqp.Persistent,
		MessageId:       r.MessageID,
		Timestamp:       r.CreatedAt,
		Body:            r.Payload,
		ContentType:     deref(r.ContentType),
		Type:            deref(r.Type),
		CorrelationId:   deref(r.CorrelationID),
		ReplyTo:         deref(r.ReplyTo),
		ContentEncoding: deref(r.ContentEncoding),
		AppId:           appID,
	}
	if r.AppID != nil {
		p.AppId = *r.AppID
	}
	if r.Priority != nil {
		p.Priority = uint8(*r.Priority) // 0-255, checked at insert
	}
	if left, ok := r.expiresIn(now); ok {
		if left <= 0 {
			return amqp.Publishing{}, fmt.Errorf("%w (%s ago)", errExpired, (-left).Round(time.Millisecond))
		}
		// A row written before migration 005's check was validated
		// may ask for more than the broker holds: cap it there rather
		// than have the channel closed over it.
		left = min(left, schema.MaxExpiration)
		p.Expiration = strconv.FormatInt(int64((left+time.Millisecond-1)/time.Millisecond), 10)
	}
	return p, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// decodeHeaders maps a JSON object to an AMQP table: string → string,
// integral number → int64, other number → float64, bool → bool, object →
// table, array → array, null → left out (in arrays, kept as void so that
// positions do not shift).
func decodeHeaders(raw []byte) (amqp.Table, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalidHeaders, err)
	}
	if v == nil {
		return nil, nil
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: want a JSON object, got %s", errInvalidHeaders, jsonKind(v))
	}
	t, err := toTable(obj)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalidHeaders, err)
	}
	return t, nil
}

func toTable(obj map[string]any) (amqp.Table, error) {
	t := make(amqp.Table, len(obj))
	for k, v := range obj {
		if len(k) > maxShortstr {
			return nil, &headerError{path: k, msg: fmt.Sprintf("key longer than %d bytes", maxShortstr)}
		}
		if v == nil {
			continue
		}
		fv, err := toField(v)
		if err != nil {
			return nil, within(err, k)
		}
		t[k] = fv
	}
	return t, nil
}

func toField(v any) (any, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string, bool:
		return v, nil
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i, nil
		}
		f, err := v.Float64()
		if err != nil || math.IsInf(f, 0) {
			return nil, &headerError{msg: "number " + Clip(v.String(), 40) + " out of range"}
		}
		return f, nil
	case map[string]any:
		return toTable(v)
	case []any:
		a := make([]any, len(v))
		for i, e := range v {
			f, err := toField(e)
			if err != nil {
				return nil, within(err, "["+strconv.Itoa(i)+"]")
			}
			a[i] = f
		}
		return a, nil
	}
	return nil, &headerError{msg: fmt.Sprintf("unsupported JSON value %T", v)}
}

// headerError is a header value that cannot be mapped. Its path ("a.b[2]")
// is built on the way out of the recursion, so that mapping headers spends
// nothing on it when all is well (it was two allocations a key).
type headerError struct {
	path string
	msg  string
}

func (e *headerError) Error() string {
	return fmt.Sprintf("header %q: %s", Clip(e.path, 40), e.msg)
}

// within prefixes the path of a headerError with the key or index it was
// found under.
func within(err error, seg string) error {
	var he *headerError
	if !errors.As(err, &he) {
		return err
	}
	if he.path == "" || he.path[0] == '[' {
		he.path = seg + he.path
	} else {
		he.path = seg + "." + he.path
	}
	return he
}

func jsonKind(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}
