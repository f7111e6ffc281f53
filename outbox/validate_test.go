package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestNewBatchRefuses(t *testing.T) {
	t.Parallel()

	ok := Message{RoutingKey: "rk"}
	withHeader := func(k string, v any) Message {
		return Message{RoutingKey: "rk", Headers: map[string]any{k: v}}
	}
	cyclic := map[string]any{}
	cyclic["self"] = cyclic
	long := strings.Repeat("k", 256)

	tests := []struct {
		name string
		msgs []Message
		kind error  // nil: accepted
		want string // the error's text
	}{
		{name: "minimal", msgs: []Message{ok}},
		{name: "everything set", msgs: []Message{{
			Exchange: "ex", RoutingKey: "rk", PartitionKey: strings.Repeat("p", 1000), MessageID: NewMessageID(),
			ContentType: "text/plain", Headers: map[string]any{}, Payload: []byte("x"), AvailableAt: time.Now(),
		}}},
		{name: "empty routing key on a named exchange", msgs: []Message{{Exchange: "ex"}}},
		{name: "empty routing key on the default exchange", msgs: []Message{{}},
			kind: ErrEmptyRoutingKey, want: "outbox: message 0: routing key is empty on the default exchange, which routes by queue name"},
		{name: "index of the bad message", msgs: []Message{ok, ok, {}},
			kind: ErrEmptyRoutingKey, want: "outbox: message 2: routing key is empty on the default exchange, which routes by queue name"},
		{name: "routing key of 255 bytes", msgs: []Message{{RoutingKey: strings.Repeat("r", 255)}}},
		{name: "routing key too long", msgs: []Message{{RoutingKey: strings.Repeat("r", 256)}},
			kind: ErrInvalidField, want: "outbox: message 0: routing key is 256 bytes, AMQP allows 255"},
		{name: "exchange too long", msgs: []Message{{RoutingKey: "rk", Exchange: strings.Repeat("e", 300)}},
			kind: ErrInvalidField, want: "outbox: message 0: exchange is 300 bytes, AMQP allows 255"},
		{name: "content type too long", msgs: []Message{{RoutingKey: "rk", ContentType: strings.Repeat("c", 256)}},
			kind: ErrInvalidField, want: "outbox: message 0: content type is 256 bytes, AMQP allows 255"},
		{name: "routing key not UTF-8", msgs: []Message{{RoutingKey: "r\xff"}},
			kind: ErrInvalidField, want: "outbox: message 0: routing key is not valid UTF-8"},
		{name: "partition key with NUL", msgs: []Message{{RoutingKey: "rk", PartitionKey: "a\x00b"}},
			kind: ErrInvalidField, want: "outbox: message 0: partition key contains a NUL byte"},

		{name: "scalar headers", msgs: []Message{{RoutingKey: "rk", Headers: map[string]any{
			"s": "x", "b": true, "n": nil, "i": -1, "i8": int8(1), "i64": int64(math.MinInt64), "u8": uint8(1),
			"u64": uint64(math.MaxInt64), "f32": float32(1.5), "f64": 1e300, "whole": 1e20,
			"num": json.Number("1.5e3"), "zero": json.Number(""), "bignum": json.Number("100000000000000000000"),
		}}}},
		{name: "nested headers", msgs: []Message{withHeader("x", map[string]any{"a": []any{1, "two", nil, map[string]any{"b": false}}})}},
		{name: "marshalable headers", msgs: []Message{{RoutingKey: "rk", Headers: map[string]any{
			"strings": []string{"a"}, "ints": map[string]int{"a": 1}, "time": time.Unix(0, 0).UTC(),
			"struct": struct{ F float64 }{1e20}, "bytes": []byte("x"), "named": time.Second,
		}}}},
		{name: "NaN", msgs: []Message{ok, ok, withHeader("x-retry", math.NaN())},
			kind: ErrInvalidHeader, want: `outbox: message 2: header "x-retry": NaN cannot be carried`},
		{name: "+Inf float32", msgs: []Message{withHeader("f", float32(math.Inf(1)))},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "f": +Inf cannot be carried`},
		{name: "-Inf", msgs: []Message{withHeader("f", math.Inf(-1))},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "f": -Inf cannot be carried`},
		{name: "uint64 beyond int64", msgs: []Message{withHeader("n", uint64(math.MaxUint64))},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "n": integer 18446744073709551615 does not fit int64`},
		{name: "uint beyond int64", msgs: []Message{withHeader("n", uint(math.MaxInt64+1))},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "n": integer 9223372036854775808 does not fit int64`},
		{name: "json.Number beyond int64", msgs: []Message{withHeader("n", json.Number("18446744073709551615"))},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "n": integer 18446744073709551615 does not fit int64`},
		{name: "json.Number beyond float64", msgs: []Message{withHeader("n", json.Number("1e400"))},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "n": number 1e400 does not fit float64`},
		{name: "json.Number not a number", msgs: []Message{withHeader("n", json.Number("NaN"))},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "n": json: invalid number literal "NaN"`},
		{name: "empty key", msgs: []Message{withHeader("", 1)},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "": key is empty`},
		{name: "key of 255 bytes", msgs: []Message{withHeader(long[:255], 1)}},
		{name: "key too long", msgs: []Message{withHeader(long, 1)},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "` + long[:64] + `": key is 256 bytes, AMQP allows 255`},
		{name: "key not UTF-8", msgs: []Message{withHeader("k\xff", 1)},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "k\xff": key is not valid UTF-8`},
		{name: "value with NUL", msgs: []Message{withHeader("s", "a\x00")},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "s": value contains a NUL byte, which jsonb cannot hold`},
		{name: "nested NaN", msgs: []Message{withHeader("a", map[string]any{"b": []any{1, math.NaN()}})},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "a.b[1]": NaN cannot be carried`},
		{name: "nested empty key", msgs: []Message{withHeader("a", map[string]any{"": 1})},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "a.": key is empty`},
		{name: "nested key too long", msgs: []Message{withHeader("a", map[string]any{long: 1})},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "a.` + long[:62] + `": key is 256 bytes, AMQP allows 255`},
		{name: "chan", msgs: []Message{withHeader("c", make(chan int))},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "c": json: unsupported type: chan int`},
		{name: "func", msgs: []Message{withHeader("f", func() {})},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "f": json: unsupported type: func()`},
		{name: "NaN in a struct", msgs: []Message{withHeader("s", struct{ F float64 }{math.NaN()})},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "s": json: unsupported value: NaN`},
		{name: "uint64 in a struct", msgs: []Message{withHeader("s", struct{ N uint64 }{math.MaxUint64})},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "s.N": integer 18446744073709551615 does not fit int64`},
		{name: "cycle", msgs: []Message{withHeader("self", cyclic)},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "` + strings.Repeat("self.", 13)[:64] + `": nested more than 32 levels deep, amqp091-go consumers read at most 32`},

		// What amqp091-go consumers can read (relay/limits.go agrees).
		{name: "partition key of 1024 bytes", msgs: []Message{{RoutingKey: "rk", PartitionKey: strings.Repeat("é", 512)}}},
		{name: "partition key too long", msgs: []Message{{RoutingKey: "rk", PartitionKey: strings.Repeat("p", 1025)}},
			kind: ErrInvalidField, want: "outbox: message 0: partition key is 1025 bytes, the table allows 1024"},
		{name: "objects 32 levels below the headers", msgs: []Message{{RoutingKey: "rk", Headers: nest(32, object)}}},
		{name: "objects 33 levels below the headers", msgs: []Message{{RoutingKey: "rk", Headers: nest(33, object)}},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "` + ("h" + strings.Repeat(".a", 32))[:64] + `": nested more than 32 levels deep, amqp091-go consumers read at most 32`},
		{name: "arrays 32 levels below the headers", msgs: []Message{{RoutingKey: "rk", Headers: nest(32, array)}}},
		{name: "arrays 33 levels below the headers", msgs: []Message{{RoutingKey: "rk", Headers: nest(33, array)}},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "h` + strings.Repeat("[0]", 21)[:63] + `": nested more than 32 levels deep, amqp091-go consumers read at most 32`},
		{name: "typed slice 33 levels below the headers", msgs: []Message{{RoutingKey: "rk", Headers: nest(33, func(v any) any {
			if _, ok := v.(int); ok {
				return []string{"x"}
			}
			return array(v)
		})}}, kind: ErrInvalidHeader, want: `outbox: message 0: header "h` + strings.Repeat("[0]", 21)[:63] + `": nested more than 32 levels deep, amqp091-go consumers read at most 32`},
		{name: "8192 headers", msgs: []Message{{RoutingKey: "rk", Headers: entries(8192)}}},
		{name: "8193 headers", msgs: []Message{{RoutingKey: "rk", Headers: entries(8193)}},
			kind: ErrInvalidHeader, want: "outbox: message 0: headers have 8193 entries, amqp091-go consumers read at most 8192"},
		{name: "8193 headers, one nil", msgs: []Message{{RoutingKey: "rk", Headers: withNil(entries(8193))}}},
		{name: "object of 8193 entries", msgs: []Message{withHeader("o", []any{entries(8193)})},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "o[0]": object of 8193 entries, amqp091-go consumers read at most 8192`},
		{name: "typed map of 8193 entries, one nil pointer", msgs: []Message{withHeader("o", typedEntries(8193))}},
		{name: "array of 8192 nils", msgs: []Message{withHeader("a", make([]any, 8192))}},
		{name: "array of 8193 nils", msgs: []Message{withHeader("a", make([]any, 8193))},
			kind: ErrInvalidHeader, want: `outbox: message 0: header "a": array of 8193 elements, amqp091-go consumers read at most 8192`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := newBatch(context.Background(), tt.msgs)
			if tt.kind == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted; want %q", tt.want)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error\n got %q\nwant %q", got, tt.want)
			}
			if !errors.Is(err, tt.kind) {
				t.Errorf("errors.Is(%v, %v) is false", err, tt.kind)
			}
			var me *MessageError
			if !errors.As(err, &me) {
				t.Errorf("%v is not a *MessageError", err)
			}
		})
	}
}

func TestEncodeHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   map[string]any
		want string
	}{
		{nil, ""},
		{map[string]any{}, "{}"},
		{map[string]any{"b": 1.5, "a": []any{int64(1), "x", nil}, "c": map[string]any{"d": true}},
			`{"a":[1,"x",null],"b":1.5,"c":{"d":true}}`},
	}
	for _, tt := range tests {
		got, err := encodeHeaders(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("encodeHeaders(%v) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// nest returns headers whose value "h" is 1 wrapped depth times by wrap.
func nest(depth int, wrap func(any) any) map[string]any {
	var v any = 1
	for range depth {
		v = wrap(v)
	}
	return map[string]any{"h": v}
}

func object(v any) any { return map[string]any{"a": v} }
func array(v any) any  { return []any{v} }

// entries returns a map of n int entries.
func entries(n int) map[string]any {
	m := make(map[string]any, n)
	for i := range n {
		m[strconv.Itoa(i)] = i
	}
	return m
}

// withNil sets one of m's values to nil: the relay leaves it out.
func withNil(m map[string]any) map[string]any {
	m["0"] = nil
	return m
}

// typedEntries returns a typed map of n entries, one a nil pointer, which
// encoding/json writes as null.
func typedEntries(n int) map[string]*int {
	m := make(map[string]*int, n)
	for i := range n {
		m[strconv.Itoa(i)] = &i
	}
	m["0"] = nil
	return m
}
