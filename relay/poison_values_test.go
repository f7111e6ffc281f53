package relay_test

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// poisonRow is an outbox row of arbitrary values and what must become of it.
type poisonRow struct {
	exchange, key          string
	contentType, partition *string
	headers                *string // JSON; nil is SQL null
	payload                []byte
	// problems lists what last_error may say: the row must be parked. With
	// none, it must be delivered.
	problems []string
}

// poisonValues are the values rows are drawn from.
type poisonValues struct {
	b                                  *testBundle
	ex255                              string // exists, bound to the queue
	exchanges, keys, types, partitions []string
	goodExchanges, goodKeys, goodTypes []string
	headers                            []struct{ json, problem string }
	payloads                           [][]byte
}

// headersGood is how many of poisonValues.headers are good: the first ones.
const headersGood = 12

// newPoisonValues declares the exchange of 255 bytes and lists the values;
// the header the broker refuses by closing the channel only withCC.
func newPoisonValues(t *testing.T, b *testBundle, withCC bool) *poisonValues {
	v := &poisonValues{b: b, ex255: sized(b.env.Name+".", "x", 255)}
	ch := b.env.Channel(t)
	if err := ch.ExchangeDeclare(v.ex255, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(b.queue, "#", v.ex255, false, nil); err != nil {
		t.Fatal(err)
	}
	// Every length is built by repeating one unit, which compresses well;
	// the partition keys of random hex digits below do not.
	edge := func(prefix string) []string {
		return []string{"", "a", sized(prefix, "x", 255), sized(prefix, "x", 256), sized(prefix, "x", 65536),
			sized(prefix, "é", 255), sized(prefix, "é", 256), sized(prefix, "😀", 255), sized(prefix, "😀", 256)}
	}
	v.exchanges = append(edge(b.env.Name+"."), b.exchange, v.ex255) // "a" and the multibyte ones do not exist
	v.keys = append(edge(""), "good.key", b.queue)
	v.types = append(edge(""), "application/json")
	// A row that fails backs off into partition_idx, whose entries hold
	// about 2.7 KB of a key that does not compress: over it, the relay
	// could not record the attempt and its batch was settled never.
	// Migration 003 refuses keys over 1024 bytes at insert.
	hexRNG := rand.NewChaCha8([32]byte{})
	incompressible := func(n int) string {
		b := make([]byte, (n+1)/2)
		_, _ = hexRNG.Read(b) // never returns an error
		return hex.EncodeToString(b)[:n]
	}
	v.partitions = append(edge(""), "pk-1", "pk-2", incompressible(1024), incompressible(1025), incompressible(3000))
	short := func(vs []string) []string {
		return slices.DeleteFunc(slices.Clone(vs), func(s string) bool { return s == "" || len(s) > 255 })
	}
	v.goodExchanges, v.goodKeys, v.goodTypes = []string{b.exchange, v.ex255}, short(v.keys), short(v.types)

	deep := func(d int) string { return strings.Repeat(`{"a":`, d) + "1" + strings.Repeat("}", d) }
	str := func(n int) string { return strings.Repeat("h", n) }
	nulls := func(n int) string { return "[" + strings.Repeat("null,", n-1) + "null]" }
	wide := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, `,"%d":%d`, i, i)
		}
		return "{" + b.String()[1:] + "}"
	}
	v.headers = []struct{ json, problem string }{
		{json: ""}, // SQL null
		{json: "{}"},
		// amqp091-go consumers read tables and arrays nested at most 32
		// below the headers, holding at most 8192 entries (read.go,
		// maxFieldDepth, maxContainerElements), and close their
		// connection over more: the relay must not publish more.
		{json: deep(33)}, // the headers and 32 tables below them
		{json: `{"h": ` + strings.Repeat("[", 32) + "1" + strings.Repeat("]", 32) + "}"},
		{json: wide(8192)},
		{json: `{"a": ` + nulls(8192) + "}"},
		{json: `{"` + str(255) + `": "v"}`},
		{json: `{"max": 9223372036854775807, "over": 9223372036854775808, "under": -9223372036854775809}`},
		{json: `{"f": 1.5, "z": -0.0, "tiny": 1e-300, "avogadro": 6.02e23}`},
		{json: `{"a": [1, "two", null, true, 1.5, {"x": [false]}, [], [[1]]], "n": null}`},
		{json: `{"s": "` + str(64<<10) + `"}`},
		{json: `{"é": "ü", "😀": ["😀"]}`},
		{json: deep(10001), problem: "exceeded max depth"},
		{json: deep(34), problem: "more than 32 levels deep"},
		{json: wide(8193), problem: "headers hold 8193 entries"},
		{json: `{"a": ` + nulls(8193) + "}", problem: "an array of 8193 elements"},
		{json: `{"` + str(256) + `": "v"}`, problem: "key longer than 255 bytes"},
		{json: `{"n": 1e400}`, problem: "out of range"},
		{json: `{"a": "` + str(70000) + `", "b": "` + str(70000) + `"}`, problem: "headers encode to"},
	}
	if withCC {
		v.headers = append(v.headers, struct{ json, problem string }{`{"CC": "not an array"}`, problemCC})
	}
	v.payloads = [][]byte{{}, {'p'}, []byte(strings.Repeat("p", 64<<10))}
	return v
}

// row draws a row: from the good values only when good is set, else from
// every value.
func (v *poisonValues) row(rng *rand.Rand, good bool) poisonRow {
	choose := func(vs []string) string { return vs[rng.IntN(len(vs))] }
	optional := func(vs []string) *string {
		if rng.IntN(len(vs)+1) == 0 {
			return nil
		}
		s := choose(vs)
		return &s
	}
	exchanges, keys, types, headers := v.exchanges, v.keys, v.types, v.headers
	if good {
		exchanges, keys, types, headers = v.goodExchanges, v.goodKeys, v.goodTypes, v.headers[:headersGood]
	}
	r := poisonRow{exchange: choose(exchanges), key: choose(keys), contentType: optional(types),
		partition: optional(v.partitions), payload: v.payloads[rng.IntN(len(v.payloads))]}
	if good && rng.IntN(4) == 0 {
		r.exchange, r.key = "", v.b.queue // the default exchange, to the queue
	}
	if h := headers[rng.IntN(len(headers))]; h.json != "" {
		r.headers = &h.json
		if h.problem != "" {
			r.problems = append(r.problems, h.problem)
		}
	}
	switch {
	case len(r.exchange) > 255:
		r.problems = append(r.problems, fmt.Sprintf("exchange is %d bytes", len(r.exchange)))
	case r.exchange == "" && r.key != v.b.queue:
		r.problems = append(r.problems, "312 NO_ROUTE")
	case r.exchange != "" && r.exchange != v.b.exchange && r.exchange != v.ex255:
		r.problems = append(r.problems, "does not exist")
	}
	if len(r.key) > 255 {
		r.problems = append(r.problems, fmt.Sprintf("routing_key is %d bytes", len(r.key)))
	}
	if r.contentType != nil && len(*r.contentType) > 255 {
		r.problems = append(r.problems, fmt.Sprintf("content_type is %d bytes", len(*r.contentType)))
	}
	return r
}

// insertRefusals lists the constraints (without the table's prefix) of
// which the insert of r must violate one.
func insertRefusals(r poisonRow, predating bool) []string {
	var out []string
	if r.key == "" && r.exchange == "" {
		out = append(out, "routable")
	}
	for col, v := range map[string]*string{"exchange": &r.exchange, "routing_key": &r.key, "content_type": r.contentType} {
		if !predating && v != nil && len(*v) > 255 {
			out = append(out, col+"_size")
		}
	}
	// Kept in the predating run: the relay has no defence of its own
	// against a key too long for the index, only this check.
	if r.partition != nil && len(*r.partition) > 1024 {
		out = append(out, "partkey_size")
	}
	return out
}

// sized returns prefix and repetitions of unit, padded with 'x' before them
// to exactly n bytes, so that a multibyte unit ends at byte n.
func sized(prefix, unit string, n int) string {
	body := n - len(prefix)
	return prefix + strings.Repeat("x", body%len(unit)) + strings.Repeat(unit, body/len(unit))
}
