package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

func TestDeadCommands(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	ex := e.Exchange(t, "ex", "fanout")
	recv := e.Consume(t, e.Queue(t, "q", ex, ""))
	env := baseEnv(e)
	env["OUTBOX_POLL_INTERVAL"] = "1h" // only the NOTIFY of `dead retry` can wake the relay in time

	var fixed, other, pending int64 // pending: a live row, not dead
	for _, r := range []struct {
		id       *int64
		exchange string
		dead     string
	}{
		{&fixed, ex, "now() - interval '2 hours'"},
		{&other, e.Name + ".gone", "now()"},
		{&pending, ex, "null"},
	} {
		err := e.Pool.QueryRow(ctx, `insert into `+e.Table.Ident()+` (exchange, routing_key, payload, attempts, last_error, dead_at)
			values ($1, 'k', 'x', 10, 'exchange "x" does not exist', `+r.dead+`) returning id`, r.exchange).Scan(r.id)
		if err != nil {
			t.Fatal(err)
		}
	}

	stdout, stderr, code := runBin(t, env, "dead", "list", "-o", "json")
	if code != 0 {
		t.Fatalf("dead list: exit %d: %s", code, stderr)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatalf("dead list -o json: %v\n%s", err, stdout)
	}
	if len(rows) != 2 || rows[0]["id"] != float64(fixed) || rows[0]["attempts"] != 10.0 ||
		rows[0]["last_error"] != `exchange "x" does not exist` || rows[1]["id"] != float64(other) {
		t.Errorf("dead list = %v", rows)
	}
	for _, k := range []string{"message_id", "exchange", "routing_key", "dead_at", "created_at"} {
		if _, ok := rows[0][k]; !ok {
			t.Errorf("dead list -o json lacks %q", k)
		}
	}
	stdout, _, _ = runBin(t, env, "dead", "list", "-older-than", "1h")
	if !strings.Contains(stdout, fmt.Sprint(fixed)) || strings.Contains(stdout, e.Name+".gone") {
		t.Errorf("dead list -older-than 1h:\n%s", stdout)
	}
	stdout, _, _ = runBin(t, env, "dead", "list", "-exchange", e.Name+".gone")
	if !strings.Contains(stdout, e.Name+".gone") || strings.Contains(stdout, "  "+ex+"  ") {
		t.Errorf("dead list -exchange:\n%s", stdout)
	}

	for _, args := range [][]string{{"dead", "retry"}, {"dead", "purge", "-all"}, {"dead", "frob"}, {"dead"}} {
		if _, stderr, code := runBin(t, env, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, stderr)
		}
	}

	var fixedMsg string
	if err := e.Pool.QueryRow(ctx, "select message_id::text from "+e.Table.Ident()+" where id = $1", fixed).Scan(&fixedMsg); err != nil {
		t.Fatal(err)
	}
	startRelay(t, env)
	testenv.Receive(t, recv, 1, 10*time.Second) // the pending row
	e.WaitRelayIdle(t)
	retried := time.Now()
	stdout, stderr, code = runBin(t, env, "dead", "retry", fmt.Sprint(fixed))
	if code != 0 || !strings.Contains(stdout, fmt.Sprintf("retried 1 dead row(s): %d", fixed)) {
		t.Errorf("dead retry: exit %d: %s%s", code, stdout, stderr)
	}
	if d := testenv.Receive(t, recv, 1, 10*time.Second)[0]; d.MessageId != fixedMsg {
		t.Errorf("received %s, want the retried row's %s", d.MessageId, fixedMsg)
	}
	t.Logf("retried row arrived %s after `dead retry`", time.Since(retried))

	stdout, _, code = runBin(t, env, "dead", "purge", "-yes", "-all", "-exchange", e.Name+".gone")
	if code != 0 || !strings.Contains(stdout, fmt.Sprintf("purged 1 dead row(s): %d", other)) {
		t.Errorf("dead purge: exit %d: %s", code, stdout)
	}
	if _, dead := e.Pending(t); dead != 0 {
		t.Errorf("%d dead rows left", dead)
	}
}

// Rows a check would refuse once revived (here, parked by migration 004
// for a routing key AMQP cannot carry) are listed, clipped, and left dead
// by `dead retry`, which says why; the others are retried.
func TestDeadRetrySkipsRowsThatBreakChecks(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	env := baseEnv(e)
	long := strings.Repeat("é", 20000) // 40000 bytes
	var good, bad1, bad2 int64
	for _, r := range []struct {
		id  *int64
		key string
	}{{&good, "k"}, {&bad1, long}, {&bad2, long}} {
		err := e.Pool.QueryRow(ctx, `insert into `+e.Table.Ident()+` (routing_key, payload, attempts, last_error, dead_at)
			values ($1, 'x', 3, 'routing_key is 40000 bytes; AMQP allows 255 (parked by migration 004)', now()) returning id`, r.key).Scan(r.id)
		if err != nil {
			t.Fatal(err)
		}
	}

	stdout, stderr, code := runBin(t, env, "dead", "list")
	if code != 0 {
		t.Fatalf("dead list: exit %d: %s", code, stderr)
	}
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if len(line) > 400 || !utf8.ValidString(line) {
			t.Errorf("dead list: a line of %d bytes (valid UTF-8: %t): %.200q", len(line), utf8.ValidString(line), line)
		}
	}

	stdout, stderr, code = runBin(t, env, "dead", "retry", "-all")
	want := fmt.Sprintf("retried 1 dead row(s): %d; they are available now\n"+
		"2 row(s) not retried: routing_key longer than 255 bytes (check %s_routing_key_size): %d, %d; fix or purge them\n",
		good, e.Table.Name, bad1, bad2)
	if code != 0 || stdout != want {
		t.Errorf("dead retry -all: exit %d\n got %q\nwant %q\n%s", code, stdout, want, stderr)
	}
	if live, dead := e.Pending(t); live != 1 || dead != 2 {
		t.Errorf("after retry: %d live, %d dead rows; want 1 and 2", live, dead)
	}
}
