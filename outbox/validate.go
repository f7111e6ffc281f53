package outbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/outbox-relay/outbox-relay/schema"
)

// Errors that Enqueue reports, inside a *MessageError, for a message it
// refuses before writing anything. Test for them with errors.Is.
var (
	// ErrEmptyRoutingKey means Message.RoutingKey is empty while
	// Message.Exchange is too: the default exchange routes by queue name,
	// and no queue is named "". A named exchange (fanout, headers) takes an
	// empty routing key.
	ErrEmptyRoutingKey = errors.New("outbox: empty routing key")
	// ErrInvalidField means a field cannot be stored or published:
	// Exchange, RoutingKey, ContentType or a text property (Type,
	// CorrelationID, ReplyTo, ContentEncoding, AppID) is longer than the
	// 255 bytes of an AMQP short string, PartitionKey is longer than the
	// table allows (schema.MaxPartitionKey, 1024 bytes), a text field is
	// not valid UTF-8 or holds a NUL byte (which PostgreSQL text cannot
	// hold), or Expiration is negative.
	ErrInvalidField = errors.New("outbox: invalid field")
	// ErrInvalidHeader means a header key or value cannot survive the trip
	// through jsonb to an AMQP headers table; see "Headers" in the package
	// documentation.
	ErrInvalidHeader = errors.New("outbox: invalid header")
)

// MessageError tells which message of a batch was refused and why. When
// Enqueue returns one, nothing of the batch was written.
type MessageError struct {
	Index int   // position of the message in the batch, from 0
	Err   error // the reason; matches one of the Err variables with errors.Is
}

// Error returns e.g. `outbox: message 2: header "x-retry": NaN cannot be
// carried`.
func (e *MessageError) Error() string { return fmt.Sprintf("outbox: message %d: %v", e.Index, e.Err) }

// Unwrap returns e.Err, so that errors.Is finds the Err variable behind it.
func (e *MessageError) Unwrap() error { return e.Err }

// reason is an error with its own wording that still matches its kind with
// errors.Is, so that messages read `header "x": NaN cannot be carried`
// rather than repeating the sentinel's text.
type reason struct {
	kind error
	msg  string
}

func (r *reason) Error() string { return r.msg }
func (r *reason) Unwrap() error { return r.kind }

func invalidf(kind error, format string, args ...any) error {
	return &reason{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// maxShortstr is the longest AMQP short string: exchange and queue names,
// routing keys, content types and header names.
const maxShortstr = 255

// What consumers can read. amqp091-go, from v1.16 (read.go: maxFieldDepth,
// maxContainerElements), refuses a table or array nested more than 32
// levels below the headers table, or holding more than 8192 entries (the
// headers included). It closes the consumer's connection over such a
// message, and the broker delivers it again, forever (with auto-ack, it is
// lost instead): a poison message. The relay refuses to publish one
// (relay/readable.go) and parks it dead; refusing it here tells the writer
// instead. Entries are counted as the relay counts them: a null in an
// object is left out of the table and does not count, a null in an array
// is a void and does. The depth bound also stops checkValue from recursing
// forever on a map that contains itself.
const (
	maxFieldDepth   = 32
	maxFieldEntries = 8192
)

// checkFields checks m's text fields.
func (m *Message) checkFields() error {
	if m.RoutingKey == "" && m.Exchange == "" {
		return invalidf(ErrEmptyRoutingKey, "routing key is empty on the default exchange, which routes by queue name")
	}
	if err := checkText("exchange", m.Exchange, true); err != nil {
		return err
	}
	if err := checkText("routing key", m.RoutingKey, true); err != nil {
		return err
	}
	if len(m.PartitionKey) > schema.MaxPartitionKey {
		return invalidf(ErrInvalidField, "partition key is %d bytes, the table allows %d", len(m.PartitionKey), schema.MaxPartitionKey)
	}
	if err := checkText("partition key", m.PartitionKey, false); err != nil {
		return err
	}
	if m.Expiration < 0 || m.Expiration > schema.MaxExpiration {
		return invalidf(ErrInvalidField, "expiration %s is negative or over %s (RabbitMQ's limit)", m.Expiration, schema.MaxExpiration)
	}
	for _, f := range [...]struct{ name, value string }{
		{"content type", m.ContentType},
		{"type", m.Type},
		{"correlation id", m.CorrelationID},
		{"reply to", m.ReplyTo},
		{"content encoding", m.ContentEncoding},
		{"app id", m.AppID},
	} {
		if err := checkText(f.name, f.value, true); err != nil {
			return err
		}
	}
	return nil
}

func checkText(field, s string, shortstr bool) error {
	switch {
	case shortstr && len(s) > maxShortstr:
		return invalidf(ErrInvalidField, "%s is %d bytes, AMQP allows %d", field, len(s), maxShortstr)
	case !utf8.ValidString(s):
		return invalidf(ErrInvalidField, "%s is not valid UTF-8", field)
	case strings.IndexByte(s, 0) >= 0:
		return invalidf(ErrInvalidField, "%s contains a NUL byte", field)
	}
	return nil
}

// encodeHeaders checks h and returns it as a JSON object, or "" (SQL null)
// when h is nil. Keys are checked in sorted order so that the error is the
// same every time.
func encodeHeaders(h map[string]any) (string, error) {
	if h == nil {
		return "", nil
	}
	entries := 0
	for _, k := range slices.Sorted(maps.Keys(h)) {
		if err := checkKey(k, k); err != nil {
			return "", err
		}
		null, err := checkValue(k, h[k], 1)
		if err != nil {
			return "", err
		}
		if !null {
			entries++
		}
	}
	if entries > maxFieldEntries {
		return "", invalidf(ErrInvalidHeader, "headers have %d entries, amqp091-go consumers read at most %d", entries, maxFieldEntries)
	}
	b, err := json.Marshal(h)
	if err != nil { // checkValue let through something encoding/json refuses
		return "", fmt.Errorf("%w: %w", ErrInvalidHeader, err)
	}
	return string(b), nil
}

// checkKey checks a header name, or a key of a table nested in a header.
func checkKey(path, k string) error {
	switch {
	case k == "":
		return invalidf(ErrInvalidHeader, "header %.64q: key is empty", path)
	case len(k) > maxShortstr:
		return invalidf(ErrInvalidHeader, "header %.64q: key is %d bytes, AMQP allows %d", path, len(k), maxShortstr)
	}
	return checkString(path, "key", k)
}

// checkString rejects what encoding/json would silently change (invalid
// UTF-8 becomes U+FFFD) and what jsonb refuses (\u0000).
func checkString(path, what, s string) error {
	switch {
	case !utf8.ValidString(s):
		return invalidf(ErrInvalidHeader, "header %.64q: %s is not valid UTF-8", path, what)
	case strings.IndexByte(s, 0) >= 0:
		return invalidf(ErrInvalidHeader, "header %.64q: %s contains a NUL byte, which jsonb cannot hold", path, what)
	}
	return nil
}

// checkValue checks that v, found at path depth levels below the headers
// table, arrives at the consumer as the value it is: the relay publishes
// JSON strings as strings, integral numbers as int64, other numbers as
// float64, booleans, objects as tables and arrays as arrays, and leaves
// nulls out of tables. It reports whether v is a null.
func checkValue(path string, v any, depth int) (null bool, err error) {
	switch v := v.(type) {
	case nil:
		return true, nil
	case bool, int, int8, int16, int32, int64, uint8, uint16, uint32:
		return false, nil
	case string:
		return false, checkString(path, "value", v)
	case uint:
		return false, checkUint(path, uint64(v))
	case uint64:
		return false, checkUint(path, v)
	case uintptr:
		return false, checkUint(path, uint64(v))
	case float32:
		return false, checkFloat(path, float64(v))
	case float64:
		return false, checkFloat(path, v)
	case json.Number:
		return false, checkNumber(path, v)
	case map[string]any:
		if depth > maxFieldDepth {
			return false, tooDeep(path)
		}
		entries := 0
		for _, k := range slices.Sorted(maps.Keys(v)) {
			p := path + "." + k
			if err := checkKey(p, k); err != nil {
				return false, err
			}
			null, err := checkValue(p, v[k], depth+1)
			if err != nil {
				return false, err
			}
			if !null {
				entries++
			}
		}
		if entries > maxFieldEntries {
			return false, invalidf(ErrInvalidHeader, "header %.64q: object of %d entries, amqp091-go consumers read at most %d", path, entries, maxFieldEntries)
		}
		return false, nil
	case []any:
		if depth > maxFieldDepth {
			return false, tooDeep(path)
		}
		if len(v) > maxFieldEntries {
			return false, invalidf(ErrInvalidHeader, "header %.64q: array of %d elements, amqp091-go consumers read at most %d", path, len(v), maxFieldEntries)
		}
		for i, e := range v {
			if _, err := checkValue(path+"["+strconv.Itoa(i)+"]", e, depth+1); err != nil {
				return false, err
			}
		}
		return false, nil
	default:
		// Structs, typed maps and slices, named types, json.Marshaler and
		// encoding.TextMarshaler: check what encoding/json makes of them.
		b, err := json.Marshal(v)
		if err != nil {
			return false, invalidf(ErrInvalidHeader, "header %.64q: %v", path, err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		var x any
		if err := dec.Decode(&x); err != nil {
			return false, invalidf(ErrInvalidHeader, "header %.64q: %v", path, err)
		}
		return checkValue(path, x, depth)
	}
}

func tooDeep(path string) error {
	return invalidf(ErrInvalidHeader, "header %.64q: nested more than %d levels deep, amqp091-go consumers read at most %d", path, maxFieldDepth, maxFieldDepth)
}

// checkUint rejects what does not fit int64: the relay would publish it as
// a float64 and round it.
func checkUint(path string, u uint64) error {
	if u > math.MaxInt64 {
		return invalidf(ErrInvalidHeader, "header %.64q: integer %d does not fit int64", path, u)
	}
	return nil
}

func checkFloat(path string, f float64) error {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return invalidf(ErrInvalidHeader, "header %.64q: %s cannot be carried", path, strconv.FormatFloat(f, 'g', -1, 64))
	}
	return nil
}

// checkNumber checks a number given as JSON text, the way the relay reads
// it: without fraction or exponent it must fit int64 (or be a float64
// exactly), otherwise it must fit float64.
func checkNumber(path string, n json.Number) error {
	if n == "" {
		return nil // encoding/json writes 0
	}
	if _, err := json.Marshal(n); err != nil {
		return invalidf(ErrInvalidHeader, "header %.64q: %v", path, err)
	}
	s := n.String()
	if strings.ContainsAny(s, ".eE") {
		if _, err := strconv.ParseFloat(s, 64); err != nil {
			return invalidf(ErrInvalidHeader, "header %.64q: number %.40s does not fit float64", path, s)
		}
		return nil
	}
	if _, err := strconv.ParseInt(s, 10, 64); err == nil {
		return nil
	}
	// The relay publishes an integer beyond int64 as a float64. That is
	// fine for a whole float64 such as 1e20, which encoding/json writes
	// without an exponent, but not when it would round the value.
	if f, err := strconv.ParseFloat(s, 64); err == nil && strconv.FormatFloat(f, 'f', -1, 64) == s {
		return nil
	}
	return invalidf(ErrInvalidHeader, "header %.64q: integer %.40s does not fit int64", path, s)
}
