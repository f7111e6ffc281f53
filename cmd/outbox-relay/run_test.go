package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestRunStatusAndShutdown runs the binary as an operator would: status
// before, during and after; probes; SIGTERM exits 0.
func TestRunStatusAndShutdown(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	ex := e.Exchange(t, "ex", "topic")
	q := e.Queue(t, "q", ex, "#")
	recv := e.Consume(t, q)
	env := baseEnv(e)
	env["OUTBOX_METRICS_ADDR"] = testenv.FreeAddr(t)

	if _, err := e.Pool.Exec(ctx, `insert into `+e.Table.Ident()+` (exchange, routing_key, payload, created_at)
		values ($1, 'a', 'x', now() - interval '5 seconds'), ($1, 'b', 'y', now()), ($1, 'c', 'z', now())`, ex); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Pool.Exec(ctx, `update `+e.Table.Ident()+` set dead_at = now(), attempts = 10, last_error = 'test' where routing_key = 'c'`); err != nil {
		t.Fatal(err)
	}
	st := status(t, env)
	if st["pending"] != 2.0 || st["dead"] != 1.0 || st["leader"] != nil {
		t.Errorf("status before run = %v; want pending 2, dead 1, no leader", st)
	}
	if age, _ := st["oldest_pending_age_seconds"].(float64); age < 5 {
		t.Errorf("oldest_pending_age_seconds = %v, want >= 5", st["oldest_pending_age_seconds"])
	}
	stdout, _, code := runBin(t, env, "status")
	if code != 0 || !strings.Contains(stdout, "pending") || !strings.Contains(stdout, "dead") {
		t.Errorf("status table: exit %d:\n%s", code, stdout)
	}

	p := startRelay(t, env)
	testenv.Receive(t, recv, 2, 15*time.Second)
	base := "http://" + env["OUTBOX_METRICS_ADDR"]
	testenv.WaitFor(t, 10*time.Second, "/readyz to answer 200", func() bool {
		code, _ := get(base + "/readyz")
		return code == http.StatusOK
	})
	if code, _ := get(base + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	// The rows are counted once settled, a moment after they arrive.
	table := `{table="` + e.Table.Schema + "." + e.Table.Name + `"}`
	want := map[string]float64{"outbox_published_total" + table: 2, "outbox_leader" + table: 1}
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("/metrics to show %v", want), func() bool {
		m, err := harness.Scrape(ctx, env["OUTBOX_METRICS_ADDR"])
		if err != nil {
			return false
		}
		for series, v := range want {
			if got, ok := m.Value(series); !ok || got != v {
				return false
			}
		}
		return true
	})
	st = status(t, env)
	if st["pending"] != 0.0 || st["dead"] != 1.0 || st["leader"] == nil {
		t.Errorf("status while running = %v; want pending 0, dead 1, a leader", st)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0\n%s", code, p.stderr.String())
	}
	if st := status(t, env); st["leader"] != nil {
		t.Errorf("leader after stop = %v", st["leader"])
	}
}

// TestPythonProducer runs the README's Python example: psycopg2 writes
// through outbox_enqueue() in its own transaction, and only the committed
// events arrive.
func TestPythonProducer(t *testing.T) {
	t.Parallel()
	testenv.RequirePython(t, "psycopg2")
	e := testenv.New(t)
	ex := e.Exchange(t, "orders", "topic")
	q := e.Queue(t, "q", ex, "order.*")
	recv := e.Consume(t, q)

	out, err := exec.Command(testenv.Python, "../../testdata/producer.py", testenv.DatabaseURL(), e.Table.Schema+"."+e.Table.Name, ex, "5").CombinedOutput()
	if err != nil {
		t.Fatalf("producer.py: %v\n%s", err, out)
	}
	committed := map[string]bool{}
	var rolledBack string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "rolled back "); ok {
			rolledBack = id
		} else {
			committed[sc.Text()] = true
		}
	}
	if len(committed) != 5 || rolledBack == "" {
		t.Fatalf("producer output:\n%s", out)
	}

	startRelay(t, baseEnv(e))
	for _, d := range testenv.Receive(t, recv, 5, 15*time.Second) {
		if !committed[d.MessageId] {
			t.Errorf("received %s, not a committed message", d.MessageId)
		}
		if d.ContentType != "application/json" || d.Headers["source"] != "python" {
			t.Errorf("message %s: content type %q, headers %v", d.MessageId, d.ContentType, d.Headers)
		}
		delete(committed, d.MessageId)
	}
	select {
	case d := <-recv:
		t.Errorf("unexpected message %s (%s); rolled back was %s", d.MessageId, d.RoutingKey, rolledBack)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestSecretsStayOutOfLogs runs the relay with passwords in both URLs and
// in the password file, against servers that refuse them, and checks that
// no password shows up in its logs (text and JSON), its metrics or its
// status output.
func TestSecretsStayOutOfLogs(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	const dbSecret, urlSecret, fileSecret = "db-Secr3t-pw", "url-Secr3t-pw", "file-Secr3t-pw"
	pwFile := filepath.Join(t.TempDir(), "amqp-password")
	if err := os.WriteFile(pwFile, []byte(fileSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			env := baseEnv(e)
			env["OUTBOX_LOG_FORMAT"] = format
			env["OUTBOX_LOG_LEVEL"] = "debug"
			env["OUTBOX_METRICS_ADDR"] = testenv.FreeAddr(t)
			// The database URL works (trust auth ignores the password);
			// the broker refuses the user, whatever the password.
			env["OUTBOX_DATABASE_URL"] = strings.Replace(testenv.DatabaseURL(), "postgres@", "postgres:"+dbSecret+"@", 1)
			env["OUTBOX_AMQP_URL"] = "amqp://nobody:" + urlSecret + "@127.0.0.1:5672/,amqp://nobody:" + urlSecret + "@127.0.0.1:1/"
			env["OUTBOX_AMQP_PASSWORD_FILE"] = pwFile
			p := startRelay(t, env)
			testenv.WaitFor(t, 30*time.Second, "two failed broker connects", func() bool {
				return strings.Count(p.stderr.String(), "broker connect failed") >= 2
			})
			_, metrics := get("http://" + env["OUTBOX_METRICS_ADDR"] + "/metrics")
			status, _, _ := runBin(t, env, "status", "-o", "json")
			if code := p.stop(t); code != 0 {
				t.Errorf("exit code %d after SIGTERM", code)
			}
			for what, out := range map[string]string{"logs": p.stderr.String(), "metrics": metrics, "status": status} {
				for _, secret := range []string{dbSecret, urlSecret, fileSecret} {
					if strings.Contains(out, secret) {
						t.Errorf("%s contain %s:\n%s", what, secret, out)
					}
				}
			}
			if !strings.Contains(p.stderr.String(), "nobody") {
				t.Errorf("logs do not name the refused user:\n%s", p.stderr.String())
			}
		})
	}
}
