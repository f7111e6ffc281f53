package recipes_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// socketIODir holds the recipe's scripts (docs/socketio.md).
const socketIODir = "../../docs/recipes/socketio"

// TestSocketIOFanOut runs docs/socketio.md: three Flask-SocketIO instances
// share one fanout exchange through KombuManager, a service commits 100
// events and rolls back 10 through the outbox, and the relay publishes
// them. Every websocket client must get the 100, once each, in commit
// order, and none of the 10.
func TestSocketIOFanOut(t *testing.T) {
	t.Parallel()
	testenv.RequirePython(t,
		"flask_socketio:python3-flask-socketio", "socketio:python3-socketio",
		"kombu:python3-kombu", "eventlet:python3-eventlet",
		"websocket:python3-websocket", "psycopg2:python3-psycopg2")
	const commits, rollbacks, instances = 100, 10, 3

	e := testenv.New(t)
	exchange := "flask-socketio-" + e.Name
	// Before any instance starts: KombuManager declares it only once its
	// instance has had a client, and the relay's publishes to a missing
	// exchange fail.
	declareKombuExchange(t, e, exchange)

	startRelay(t, e)

	// Start everything at once: a Python start takes seconds on a busy
	// machine.
	addrs := make([]string, instances)
	servers := make([]*socketIOProc, instances)
	for i := range servers {
		addrs[i] = testenv.FreeAddr(t)
		_, port, _ := net.SplitHostPort(addrs[i])
		servers[i] = startSocketIOProc(t, e, fmt.Sprintf("server %d", i), "server.py", port, exchange)
	}
	clients := make([]*socketIOProc, instances)
	for i, server := range servers {
		waitListening(t, server, addrs[i])
		clients[i] = startSocketIOProc(t, e, fmt.Sprintf("client %d", i), "client.py",
			"http://"+addrs[i], "order", fmt.Sprint(commits), "120")
	}
	for _, c := range clients {
		testenv.WaitFor(t, pythonStart, c.name+" to connect", func() bool {
			return c.exited() || len(c.lines(t, "connected")) > 0
		})
		if c.exited() {
			t.Fatalf("%s exited before it connected: %v\nstderr:\n%s", c.name, c.err, c.stderr.String())
		}
	}
	waitProbed(t, e, exchange, clients)
	t.Log("every instance emits what reaches the exchange; the service starts")

	// The service's lines say which events it committed, in order.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := e.PythonCommand(ctx, filepath.Join(socketIODir, "service.py"),
		fmt.Sprint(commits), fmt.Sprint(rollbacks), exchange, e.Name)
	stderr := &testenv.Buffer{}
	svc.Stderr = stderr
	out, err := svc.Output()
	if err != nil {
		t.Fatalf("service.py: %v\nstderr:\n%s", err, stderr.String())
	}
	var committed, rolledBack []string
	for line := range strings.Lines(strings.TrimSpace(string(out))) {
		var tx struct {
			EventID   string `json:"event_id"`
			Committed bool   `json:"committed"`
		}
		if err := json.Unmarshal([]byte(line), &tx); err != nil || tx.EventID == "" {
			t.Fatalf("service.py printed %q: %v", line, err)
		}
		if tx.Committed {
			committed = append(committed, tx.EventID)
		} else {
			rolledBack = append(rolledBack, tx.EventID)
		}
	}
	if len(committed) != commits || len(rolledBack) != rollbacks {
		t.Fatalf("service.py committed %d and rolled back %d events, want %d and %d",
			len(committed), len(rolledBack), commits, rollbacks)
	}

	for _, c := range clients {
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s still running after 30s", c.name)
		}
		var got []string
		for _, line := range c.lines(t, "event") {
			var ev struct {
				Event string `json:"event"`
				Data  struct {
					EventID string `json:"event_id"`
				} `json:"data"`
			}
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("%s printed %q: %v", c.name, line, err)
			}
			if ev.Event == "order" {
				got = append(got, ev.Data.EventID)
			}
		}
		for _, id := range rolledBack {
			if slices.Contains(got, id) {
				t.Errorf("%s got rolled-back event %s", c.name, id)
			}
		}
		if !slices.Equal(got, committed) {
			t.Errorf("%s got %d events, want the %d committed ones once each in commit order\ngot:  %v\nwant: %v",
				c.name, len(got), len(committed), got, committed)
		}
		if c.err != nil {
			t.Errorf("%s: %v\nstderr:\n%s", c.name, c.err, c.stderr.String())
		}
	}

	// The relay deletes a row once RabbitMQ confirmed it, shortly after the
	// clients can have it.
	testenv.WaitFor(t, 10*time.Second, "an empty outbox table", func() bool {
		live, dead := e.Pending(t)
		return live == 0 || dead > 0
	})
	if live, dead := e.Pending(t); live != 0 || dead != 0 {
		t.Errorf("outbox table has %d live and %d dead rows, want none", live, dead)
	}
	var orders int
	if err := e.Pool.QueryRow(context.Background(),
		"select count(*) from "+pgx.Identifier{e.Name, "orders"}.Sanitize()).Scan(&orders); err != nil {
		t.Fatal(err)
	}
	if orders != commits {
		t.Errorf("orders table has %d rows, want the %d committed", orders, commits)
	}
}

// declareKombuExchange declares exchange as python-socketio's KombuManager
// does (kombu.Exchange(channel, type='fanout', durable=False): not
// auto-deleted, not internal, no arguments), so that the instances'
// declarations match it, and deletes it in t.Cleanup.
func declareKombuExchange(t *testing.T, e *testenv.Env, exchange string) {
	t.Helper()
	ch := e.Channel(t)
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeFanout, false, false, false, false, nil); err != nil {
		t.Fatalf("declare exchange %s: %v", exchange, err)
	}
	t.Cleanup(func() {
		if ch, err := e.AMQP.Channel(); err == nil {
			_ = ch.ExchangeDelete(exchange, false, false)
			_ = ch.Close()
		}
	})
}

// socketIOProc is one of the recipe's Python programs, killed in t.Cleanup.
type socketIOProc struct {
	name   string
	stdout *testenv.Buffer
	stderr *testenv.Buffer
	done   chan struct{} // closed once the process has exited
	err    error         // what Wait returned, set before done is closed
}

// startSocketIOProc starts script of the recipe with args, with the test's
// URLs in its environment.
func startSocketIOProc(t *testing.T, e *testenv.Env, name, script string, args ...string) *socketIOProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := e.PythonCommand(ctx, filepath.Join(socketIODir, script), args...)
	p := &socketIOProc{name: name, stdout: &testenv.Buffer{}, stderr: &testenv.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel() // kills the process if it still runs
		<-p.done
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, p.stderr.String())
		}
	})
	return p
}

func (p *socketIOProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// lines returns the JSON lines p printed so far that have key.
func (p *socketIOProc) lines(t *testing.T, key string) []string {
	t.Helper()
	var out []string
	for line := range strings.Lines(p.stdout.String()) {
		if !strings.HasSuffix(line, "\n") {
			break // still being written
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s printed %q: %v", p.name, line, err)
		}
		if _, ok := m[key]; ok {
			out = append(out, strings.TrimSuffix(line, "\n"))
		}
	}
	return out
}

// pythonStart bounds the start of the recipe's Python programs: importing
// eventlet, Flask and kombu takes seconds on a loaded machine (15 s was
// once too short in CI, beside the race-enabled tests of other packages).
const pythonStart = time.Minute

// waitListening waits until server accepts connections on addr.
func waitListening(t *testing.T, server *socketIOProc, addr string) {
	t.Helper()
	testenv.WaitFor(t, pythonStart, server.name+" to listen on "+addr, func() bool {
		if server.exited() {
			t.Fatalf("%s exited: %v\nstderr:\n%s", server.name, server.err, server.stderr.String())
		}
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
}

// waitProbed publishes 'probe' events, in the recipe's format, straight to
// exchange until every client has printed one: then every instance's
// KombuManager has bound its queue (which it does only after its first
// client connected) and emits what reaches the exchange.
func waitProbed(t *testing.T, e *testenv.Env, exchange string, clients []*socketIOProc) {
	t.Helper()
	ch := e.Channel(t)
	probe := amqp.Publishing{ContentType: "application/json",
		Body: []byte(`{"method": "emit", "event": "probe", "data": {}, "namespace": "/", "room": null, "skip_sid": null, "callback": null, "host_id": "test"}`)}
	deadline := time.Now().Add(pythonStart)
	for {
		ready := 0
		for _, c := range clients {
			if c.exited() {
				t.Fatalf("%s exited: %v\nstderr:\n%s", c.name, c.err, c.stderr.String())
			}
			for _, line := range c.lines(t, "event") {
				if strings.Contains(line, `"event": "probe"`) {
					ready++
					break
				}
			}
		}
		if ready == len(clients) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d clients got a probe event within 15s", ready, len(clients))
		}
		if err := ch.PublishWithContext(context.Background(), exchange, "", false, false, probe); err != nil {
			t.Fatalf("publish probe: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
