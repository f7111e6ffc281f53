package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// pyDelivery is what testdata/properties.py prints of one delivery: each
// property's value and the name of its Python type.
type pyDelivery map[string]any

// Every property set through outbox_enqueue() from Python arrives at a
// pika consumer as that AMQP property, with the right type; expiration is
// what remains of the row's, in milliseconds. A call written before the
// properties existed arrives as before, with OUTBOX_APP_ID's app_id.
func TestPythonPropertiesArriveAsAMQPProperties(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ex := e.Exchange(t, "events", "topic")
	q := e.Queue(t, "py", ex, "#")
	cfg := (&testBundle{env: e}).config(t)
	cfg.AppID = "relay-default"
	start(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := e.PythonCommand(ctx, "testdata/properties.py", e.Table.Derived("enqueue"), ex, q)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("properties.py: %v\n%s\nhint: apt-get install python3-psycopg2 python3-pika", err, stderr.String())
	}
	got := map[string]pyDelivery{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var d pyDelivery
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			t.Fatalf("properties.py printed %q: %v", l, err)
		}
		got[d["routing_key"].(string)] = d
	}

	full := got["job.completed"]
	if full == nil {
		t.Fatalf("no job.completed delivery in %s", out)
	}
	for name, want := range map[string]any{
		"message_id":       "6f1c1b6e-9d4a-4c4e-8a57-3c1d2a9b0e11",
		"type":             "job.completed",
		"correlation_id":   "req-42",
		"reply_to":         "api.replies",
		"priority":         float64(5),
		"priority_type":    "int",
		"content_encoding": "identity",
		"app_id":           "py-producer",
		"content_type":     "application/json",
		"delivery_mode":    float64(2),
		"expiration_type":  "str",
		"timestamp_type":   "int",
		"body":             `{"id": 7}`,
	} {
		if full[name] != want {
			t.Errorf("job.completed: %s = %#v, want %#v", name, full[name], want)
		}
	}
	if ms, err := strconv.Atoi(full["expiration"].(string)); err != nil || ms <= 0 || ms > 30_000 || ms < 20_000 {
		t.Errorf("job.completed: expiration %v; want what remains of 30s in ms", full["expiration"])
	}

	plain := got["job.started"]
	if plain == nil {
		t.Fatalf("no job.started delivery in %s", out)
	}
	for _, name := range []string{"type", "correlation_id", "reply_to", "expiration", "priority", "content_encoding"} {
		if plain[name] != nil {
			t.Errorf("job.started: %s = %#v, want none", name, plain[name])
		}
	}
	if plain["app_id"] != "relay-default" || plain["content_type"] != "application/json" ||
		plain["headers"].(map[string]any)["tenant"] != "acme" {
		t.Errorf("job.started: app_id %v, content_type %v, headers %v; want relay-default, application/json, tenant acme",
			plain["app_id"], plain["content_type"], plain["headers"])
	}
}

// A row whose expiration ran out before the relay got to it is parked dead
// with reason expired, not published, counted, and holds nothing back: the
// next row of its key is published. Its attempts are left as they were.
func TestExpiredRowIsParkedDead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	var expiredID string
	if err := b.env.Pool.QueryRow(ctx, `insert into `+b.env.Table.Ident()+`
		(exchange, routing_key, partition_key, payload, created_at, available_at, expiration)
		values ($1, 'k', 'p', 'x', now() - interval '1 minute', now() - interval '1 minute', '30 seconds')
		returning message_id::text`, b.exchange).Scan(&expiredID); err != nil {
		t.Fatal(err)
	}
	var liveID string
	if err := b.env.Pool.QueryRow(ctx, `select `+b.env.Table.Derived("enqueue")+`($1, 'k', 'y'::text, partition_key => 'p',
		expiration => '1 hour')::text`, b.exchange).Scan(&liveID); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := b.config(t)
	cfg.Registerer = reg
	start(t, cfg)

	select {
	case d := <-b.recv:
		if d.MessageId != liveID {
			t.Fatalf("received %s, want only the live row %s", d.MessageId, liveID)
		}
		if ms, err := strconv.Atoi(d.Expiration); err != nil || ms <= 3_500_000 || ms > 3_600_000 {
			t.Errorf("expiration %q, want about an hour in ms", d.Expiration)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the live row behind the expired one did not arrive")
	}
	var attempts int
	var lastErr string
	var dead bool
	if err := b.env.Pool.QueryRow(ctx, `select attempts, last_error, dead_at is not null from `+b.env.Table.Ident()+
		` where message_id = $1::uuid`, expiredID).Scan(&attempts, &lastErr, &dead); err != nil {
		t.Fatal(err)
	}
	if !dead || attempts != 0 || !strings.Contains(lastErr, "expired") {
		t.Errorf("expired row: dead %t, attempts %d, last_error %q; want dead, 0, expired", dead, attempts, lastErr)
	}
	if v := value(gather(t, reg)["outbox_publish_failures_total"], "reason", "expired"); v != 1 {
		t.Errorf(`outbox_publish_failures_total{reason="expired"} = %v, want 1`, v)
	}
	select {
	case d := <-b.recv:
		t.Errorf("unexpected delivery %s", d.MessageId)
	case <-time.After(notificationLeeway):
	}
}
