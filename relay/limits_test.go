package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

// frameMax is RabbitMQ's default frame_max, which the relay negotiates.
const frameMax = 131072

// headerWith returns a message whose content header is exactly size bytes:
// one string header "h" and nothing else (14 fixed + 4 table length + 2 key
// + 5 value prefix = 25 bytes of overhead).
func headerWith(size int) amqp.Publishing {
	return amqp.Publishing{Headers: amqp.Table{"h": strings.Repeat("x", size-25)}}
}

func TestCarriable(t *testing.T) {
	t.Parallel()
	long := func(n int) string { return strings.Repeat("k", n) }
	eAcute := strings.Repeat("é", 127) + "a" // 128 characters, 255 bytes
	for _, tc := range []struct {
		name     string
		exchange string
		key      string
		msg      amqp.Publishing
		frameMax int
		want     string // "" = carriable
	}{
		{name: "empty", key: "k"},
		{name: "255-byte names", exchange: long(255), key: long(255), msg: amqp.Publishing{ContentType: long(255), MessageId: long(255)}},
		{name: "exchange 256", exchange: long(256), key: "k", want: "exchange is 256 bytes; AMQP short strings hold at most 255"},
		{name: "routing key 300", key: long(300), want: "routing_key is 300 bytes; AMQP short strings hold at most 255"},
		{name: "routing key 65536", key: long(65536), want: "routing_key is 65536 bytes"},
		{name: "content type 256", key: "k", msg: amqp.Publishing{ContentType: long(256)}, want: "content_type is 256 bytes"},
		{name: "message id 256", key: "k", msg: amqp.Publishing{MessageId: long(256)}, want: "message_id is 256 bytes"},
		{name: "app id 256", key: "k", msg: amqp.Publishing{AppId: long(256)}, want: "app_id is 256 bytes"},
		{name: "multibyte at 255 bytes", exchange: eAcute, key: eAcute, msg: amqp.Publishing{ContentType: eAcute}},
		{name: "multibyte at 256 bytes", key: strings.Repeat("é", 128), want: "routing_key is 256 bytes"},
		{name: "4-byte runes at 256 bytes", key: "k", msg: amqp.Publishing{ContentType: strings.Repeat("😀", 64)}, want: "content_type is 256 bytes"},
		{name: "header at the frame's limit", key: "k", msg: headerWith(frameMax - 8), frameMax: frameMax},
		{name: "header one byte over", key: "k", msg: headerWith(frameMax - 7), frameMax: frameMax,
			want: "headers encode to 131065 bytes; a frame holds 131064"},
		{name: "frame size unlimited", key: "k", msg: headerWith(1 << 20)},
		{name: "nested header key 256", key: "k", msg: amqp.Publishing{Headers: amqp.Table{"a": amqp.Table{long(256): "v"}}},
			want: "header key \"kkkk"},
		{name: "unknown header type", key: "k", msg: amqp.Publishing{Headers: amqp.Table{"a": []string{"x"}}},
			want: "unsupported table field type"},
		{name: "tables 32 levels below the headers", key: "k", msg: amqp.Publishing{Headers: nested(32, table)}},
		{name: "tables 33 levels below the headers", key: "k", msg: amqp.Publishing{Headers: nested(33, table)},
			want: `header "h" nests tables and arrays more than 32 levels deep; amqp091-go consumers read at most 32`},
		{name: "arrays 32 levels below the headers", key: "k", msg: amqp.Publishing{Headers: nested(32, array)}},
		{name: "arrays 33 levels below the headers", key: "k", msg: amqp.Publishing{Headers: nested(33, array)},
			want: "more than 32 levels deep"},
		{name: "tables and arrays 33 levels below the headers", key: "k", msg: amqp.Publishing{Headers: nested(33, func(v any) any {
			if a, ok := v.([]any); ok {
				return amqp.Table{"t": a}
			}
			return []any{v}
		})}, want: "more than 32 levels deep"},
		{name: "headers of 8192 entries", key: "k", msg: amqp.Publishing{Headers: wide(8192)}},
		{name: "headers of 8193 entries", key: "k", msg: amqp.Publishing{Headers: wide(8193)},
			want: "headers hold 8193 entries; amqp091-go consumers read at most 8192"},
		{name: "nested table of 8193 entries", key: "k", msg: amqp.Publishing{Headers: amqp.Table{"a": []any{wide(8193)}}},
			want: `header "a" holds a table of 8193 entries; amqp091-go consumers read at most 8192`},
		{name: "array of 8192 voids", key: "k", msg: amqp.Publishing{Headers: amqp.Table{"a": make([]any, 8192)}}},
		{name: "array of 8193 voids", key: "k", msg: amqp.Publishing{Headers: amqp.Table{"a": make([]any, 8193)}},
			want: `header "a" holds an array of 8193 elements; amqp091-go consumers read at most 8192`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := carriable(tc.exchange, tc.key, tc.msg, tc.frameMax)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("carriable: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("carriable = %v, want %q", err, tc.want)
			case err != nil && len(err.Error()) > 200:
				t.Errorf("error of %d bytes: it must not quote the value", len(err.Error()))
			}
		})
	}
}

// nested returns headers whose value "h" is an int64 wrapped depth times
// by wrap: that many tables or arrays below the headers table.
func nested(depth int, wrap func(any) any) amqp.Table {
	var v any = int64(1)
	for range depth {
		v = wrap(v)
	}
	return amqp.Table{"h": v}
}

func table(v any) any { return amqp.Table{"a": v} }
func array(v any) any { return []any{v} }

// wide returns a table of n int64 entries.
func wide(n int) amqp.Table {
	t := make(amqp.Table, n)
	for i := range n {
		t[strconv.Itoa(i)] = int64(i)
	}
	return t
}

// The sizes are worked out by hand from AMQP 0-9-1 and amqp091-go's
// write.go. RabbitMQ agrees: it closes the connection with
// {frame_too_large,200025,131064} for the first message below, and
// reported the size computed here for 40 random nested tables.
func TestContentHeaderSize(t *testing.T) {
	t.Parallel()
	ts := time.Unix(1700000000, 0)
	for _, tc := range []struct {
		name string
		msg  amqp.Publishing
		want int
	}{
		{"one 200000-byte string header", amqp.Publishing{Headers: amqp.Table{"h": strings.Repeat("x", 200000)}}, 200025},
		{"no properties", amqp.Publishing{}, 14},
		{"empty headers are left out", amqp.Publishing{Headers: amqp.Table{}}, 14},
		{"what the relay sends", amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent,
			MessageId: "0194e9c4-1234-7abc-8def-0123456789ab", Timestamp: ts}, 14 + 17 + 1 + 37 + 8},
		{"every string property", amqp.Publishing{ContentType: "a", ContentEncoding: "b", CorrelationId: "c",
			ReplyTo: "d", Expiration: "e", MessageId: "f", Type: "g", UserId: "h", AppId: "i", Priority: 1}, 14 + 9*2 + 1},
		{"field kinds", amqp.Publishing{Headers: amqp.Table{
			"s": "abc",                             // 2 + 5+3
			"l": int64(-1),                         // 2 + 9
			"d": 1.5,                               // 2 + 9
			"t": true,                              // 2 + 2
			"F": amqp.Table{"x": nil},              // 2 + 1 + 4 + (2+1)
			"A": []any{int64(1), nil, "", []any{}}, // 2 + 5 + 9 + 1 + 5 + 5
		}}, 14 + 4 + 10 + 11 + 11 + 4 + 10 + 27},
	} {
		got, err := contentHeaderSize(tc.msg)
		if err != nil || got != tc.want {
			t.Errorf("%s: contentHeaderSize = %d, %v; want %d", tc.name, got, err, tc.want)
		}
	}
}

// Every kind of value decodeHeaders produces from JSON has a size.
func TestFieldSizeOfDecodedHeaders(t *testing.T) {
	t.Parallel()
	h, err := decodeHeaders([]byte(`{"s": "é", "i": 9223372036854775807, "f": 1e300, "big": 9223372036854775808,
		"b": false, "n": null, "o": {"deep": [1, "two", null, {"x": [true]}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := tableSize(h)
	// Table length 4; s 2+7, i 2+9, f 2+9, big 4+9 (a float64), b 2+2, n left
	// out, o 2+1+4+(deep 5 + array 5 + 9 + 8 + 1 + table 1+4+(2+5+2)).
	want := 4 + 9 + 11 + 11 + 13 + 4 + 2 + 1 + 4 + (5 + 5 + 9 + 8 + 1 + 1 + 4 + 9)
	if err != nil || got != want {
		t.Errorf("tableSize = %d, %v; want %d", got, err, want)
	}
}

func TestRefusedByClient(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", 300)
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"shortstr", fmt.Errorf("amqp: shortstr %q exceeds 255 bytes", long), true},
		{"header key", fmt.Errorf("writing key %q: %w", long, fmt.Errorf("amqp: shortstr %q exceeds 255 bytes", long)), true},
		{"header type", fmt.Errorf("writing value for key %q: %w", "k", amqp.ErrFieldType), true},
		{"validate", errors.New(`table field "k" value []string not supported`), true},
		{"closed", amqp.ErrClosed, false},
		{"broker", &amqp.Error{Code: amqp.FrameError, Reason: "FRAME_ERROR", Server: true}, false},
		{"socket", &net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}, false},
		{"closed socket", fmt.Errorf("write: %w", net.ErrClosed), false},
		{"errno", syscall.EPIPE, false},
		{"deadline", os.ErrDeadlineExceeded, false},
		{"short write", io.ErrShortWrite, false},
		{"eof", io.EOF, false},
		{"cancelled", context.Canceled, false},
		{"context deadline", fmt.Errorf("publish: %w", context.DeadlineExceeded), false},
	} {
		if got := refusedByClient(tc.err); got != tc.want {
			t.Errorf("%s: refusedByClient(%v) = %t, want %t", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestRefusedErrorIsShort(t *testing.T) {
	t.Parallel()
	inner := fmt.Errorf("amqp: shortstr %q exceeds 255 bytes", strings.Repeat("é", 40000))
	err := error(&refusedError{err: inner})
	msg := err.Error()
	if len(msg) > 300 || !utf8.ValidString(msg) {
		t.Errorf("message of %d bytes (valid UTF-8: %t): %q", len(msg), utf8.ValidString(msg), msg)
	}
	if !strings.HasPrefix(msg, `client library refused the message: amqp: shortstr "éé`) || !strings.HasSuffix(msg, `é" exceeds 255 bytes`) {
		t.Errorf("message lost its start or end: %q", msg)
	}
	if !errors.Is(err, inner) {
		t.Errorf("refusedError does not unwrap")
	}
	results := []Result{{Outcome: Acked}, {Outcome: Failed, Err: err}}
	if !clientRefused(results) {
		t.Errorf("clientRefused = false for a batch with a refused row")
	}
	results[1].Err = errors.New("broker nacked the message")
	if clientRefused(results) {
		t.Errorf("clientRefused = true for a nack")
	}
}
