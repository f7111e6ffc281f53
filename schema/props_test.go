package schema_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// propCheck is one of migration 005's checks: a value of column that
// breaks it.
type propCheck struct {
	column     string
	constraint string // without the table's name
	bad        string // a literal, cast to the column's type
}

var propChecks = []propCheck{
	{"type", "type_size", strings.Repeat("t", 256)},
	{"correlation_id", "corr_id_size", strings.Repeat("é", 128)},
	{"reply_to", "reply_to_size", strings.Repeat("r", 256)},
	{"content_encoding", "encoding_size", strings.Repeat("e", 256)},
	{"app_id", "app_id_size", strings.Repeat("a", 256)},
	{"expiration", "expiration_range", "-1 second"},
	{"expiration", "expiration_range", "0"},
	{"expiration", "expiration_range", "4294967296 milliseconds"}, // over schema.MaxExpiration
	{"priority", "priority_range", "256"},
	{"priority", "priority_range", "-1"},
}

// Bad property values are refused at insert, by a check that names itself,
// whether through a plain insert or outbox_enqueue; dead rows are exempt,
// and values at the limits go in. The longest table name keeps the
// constraints' names whole.
func TestPropertiesRefusedAtInsert(t *testing.T) {
	t.Parallel()
	name := strings.Repeat("p", 45)
	e := testenv.New(t, testenv.WithTable(name))
	ctx := context.Background()
	for _, c := range propChecks {
		typ := map[string]string{"expiration": "interval", "priority": "smallint"}[c.column]
		if typ == "" {
			typ = "text"
		}
		_, err := e.Pool.Exec(ctx, `insert into `+e.Table.Ident()+` (routing_key, payload, `+c.column+`) values ('k', 'x', $1::text::`+typ+`)`, c.bad)
		wantViolation(t, c.column+"="+c.bad, err, name+"_"+c.constraint)
		_, err = e.Pool.Exec(ctx, `select `+e.Table.Derived("enqueue")+`(exchange => '', routing_key => 'k', payload => 'x'::text, `+c.column+` => $1::text::`+typ+`)`, c.bad)
		wantViolation(t, "enqueue "+c.column+"="+c.bad, err, name+"_"+c.constraint)
		if _, err := e.Pool.Exec(ctx, `insert into `+e.Table.Ident()+` (routing_key, payload, dead_at, `+c.column+`) values ('k', 'x', now(), $1::text::`+typ+`)`, c.bad); err != nil {
			t.Errorf("dead row with %s=%s: %v", c.column, c.bad, err)
		}
	}
	if _, err := e.Pool.Exec(ctx, `select `+e.Table.Derived("enqueue")+`(exchange => '', routing_key => 'k', payload => 'x'::text,
		type => $1, correlation_id => $2, reply_to => $1, content_encoding => $1, app_id => $1,
		expiration => '1 millisecond', priority => 255)`, strings.Repeat("t", 255), strings.Repeat("é", 127)); err != nil {
		t.Errorf("values at the limits: %v", err)
	}
	if _, err := e.Pool.Exec(ctx, `select `+e.Table.Derived("enqueue")+`(exchange => '', routing_key => 'k', payload => 'x'::text, priority => 0)`); err != nil {
		t.Errorf("priority 0: %v", err)
	}
}

// outbox_enqueue takes every property as a named argument and stores it in
// its column, with available_at and message_id; calls written for
// migration 001, positional and named, work as before, each payload type
// with its content type.
func TestEnqueueNamedArguments(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	fn, tbl := e.Table.Derived("enqueue"), e.Table.Ident()

	at := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	var id string
	if err := e.Pool.QueryRow(ctx, `select `+fn+`(exchange => 'jobs', routing_key => 'job.completed',
		payload => '{"id": 7}'::jsonb, type => 'job.completed', correlation_id => 'req-42',
		reply_to => 'api.replies', expiration => '30 seconds', priority => 5,
		content_encoding => 'gzip', app_id => 'billing', available_at => $1,
		message_id => '6f1c1b6e-9d4a-4c4e-8a57-3c1d2a9b0e11')::text`, at).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if id != "6f1c1b6e-9d4a-4c4e-8a57-3c1d2a9b0e11" {
		t.Errorf("returned message_id %s, want the one given", id)
	}
	var (
		typ, corr, replyTo, enc, app, ct string
		exp                              time.Duration
		prio                             int16
		avail                            time.Time
		payload                          string
	)
	if err := e.Pool.QueryRow(ctx, `select type, correlation_id, reply_to, expiration, priority, content_encoding, app_id,
		content_type, available_at, convert_from(payload, 'UTF8') from `+tbl+` where message_id = $1::uuid`, id).Scan(
		&typ, &corr, &replyTo, &exp, &prio, &enc, &app, &ct, &avail, &payload); err != nil {
		t.Fatal(err)
	}
	if typ != "job.completed" || corr != "req-42" || replyTo != "api.replies" || exp != 30*time.Second || prio != 5 ||
		enc != "gzip" || app != "billing" || ct != "application/json" || !avail.Equal(at) || payload != `{"id": 7}` {
		t.Errorf("row: type %q correlation_id %q reply_to %q expiration %s priority %d content_encoding %q app_id %q content_type %q available_at %s payload %q",
			typ, corr, replyTo, exp, prio, enc, app, ct, avail, payload)
	}

	// Calls written for migration 001.
	for _, c := range []struct{ call, ct string }{
		{`select ` + fn + `('', 'k', '\x01'::bytea)`, "<null>"},
		{`select ` + fn + `('', 'k', 'hi'::text)`, "text/plain; charset=utf-8"},
		{`select ` + fn + `('', 'k', '{"a": 1}'::jsonb, '{"h": 1}', 'key-1')`, "application/json"},
		{`select ` + fn + `('', 'k', 'hi'::text, null, null, 'text/csv')`, "text/csv"},
		{`select ` + fn + `(exchange => '', routing_key => 'k', payload => '{}'::jsonb, partition_key => 'p')`, "application/json"},
	} {
		var got *string
		var id string
		var nulls, availNow bool
		if err := e.Pool.QueryRow(ctx, c.call+"::text").Scan(&id); err != nil {
			t.Errorf("%s: %v", c.call, err)
			continue
		}
		if err := e.Pool.QueryRow(ctx, `select content_type, num_nulls(type, correlation_id, reply_to, expiration, priority, content_encoding, app_id) = 7,
			       available_at = created_at
			  from `+tbl+` where message_id = $1::uuid`, id).Scan(&got, &nulls, &availNow); err != nil {
			t.Fatal(err)
		}
		if deref(got) != c.ct || !nulls || !availNow {
			t.Errorf("%s: content_type %s, properties null %t, available at once %t; want %s, true, true", c.call, deref(got), nulls, availNow, c.ct)
		}
	}
	// Without message_id, every call gets a random one.
	var a, b string
	if err := e.Pool.QueryRow(ctx, `select `+fn+`('', 'k', 'x'::text)::text, `+fn+`('', 'k', 'x'::text)::text`).Scan(&a, &b); err != nil || a == b {
		t.Errorf("default message ids %s, %s, %v; want two different ones", a, b, err)
	}
}
