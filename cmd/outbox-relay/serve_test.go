package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// fakeProbes answers the probes as told.
type fakeProbes struct {
	ready  bool
	live   error
	ok     bool
	status string
}

func (f fakeProbes) Ready() bool            { return f.ready }
func (f fakeProbes) Live() error            { return f.live }
func (f fakeProbes) Status() (bool, string) { return f.ok, f.status }

func TestProbeEndpoints(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		p      fakeProbes
		path   string
		code   int
		inBody string
	}{
		{"healthz live", fakeProbes{}, "/healthz", 200, "ok"},
		{"healthz stuck", fakeProbes{live: errors.New("relay loop made no progress for 3m")}, "/healthz", 503, "no progress for 3m"},
		{"readyz running", fakeProbes{ready: true}, "/readyz", 200, "ok"},
		{"readyz shutting down", fakeProbes{}, "/readyz", 503, "shutting down"},
		{"statusz up", fakeProbes{ok: true, status: "leader: all up"}, "/statusz", 200, "leader: all up"},
		{"statusz down", fakeProbes{status: "PostgreSQL LISTEN connection down"}, "/statusz", 503, "LISTEN connection down"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			newMux(prometheus.NewRegistry(), tc.p).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
			if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.inBody) {
				t.Errorf("GET %s = %d %q, want %d with %q", tc.path, rec.Code, rec.Body.String(), tc.code, tc.inBody)
			}
		})
	}
}

// probeCodes reads /healthz, /readyz and /statusz.
func probeCodes(base string) (healthz, readyz, statusz int) {
	healthz, _ = get(base + "/healthz")
	readyz, _ = get(base + "/readyz")
	statusz, _ = get(base + "/statusz")
	return
}

// TestProbesWhileServersAway cuts the relay off from PostgreSQL, then from
// the broker, through TCP proxies (the shared servers keep running):
// readiness and liveness hold, /statusz says what is down.
func TestProbesWhileServersAway(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	db, dbURL := testenv.ProxyTo(t, testenv.ProxyPostgres)
	broker, amqpURL := testenv.ProxyTo(t, testenv.ProxyBroker)
	env := baseEnv(e)
	env["OUTBOX_DATABASE_URL"], env["OUTBOX_AMQP_URL"] = dbURL, amqpURL
	env["OUTBOX_METRICS_ADDR"] = testenv.FreeAddr(t)
	base := "http://" + env["OUTBOX_METRICS_ADDR"]
	p := startRelay(t, env)

	testenv.WaitFor(t, 15*time.Second, "/statusz to say the leader is connected", func() bool {
		code, body := get(base + "/statusz")
		return code == http.StatusOK && strings.HasPrefix(body, "leader")
	})
	if h, r, _ := probeCodes(base); h != 200 || r != 200 {
		t.Errorf("connected: /healthz %d, /readyz %d; want 200, 200", h, r)
	}
	m, err := harness.Scrape(context.Background(), env["OUTBOX_METRICS_ADDR"])
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := m.Value(`outbox_build_info{table="` + e.Table.Schema + "." + e.Table.Name + `"}`); !ok || v != 1 {
		t.Errorf("outbox_build_info of the table = %v, %t; want 1", v, ok)
	}

	for _, cut := range []struct {
		what  string
		proxy interface {
			Stop()
			Start() error
		}
		body string
	}{
		{"PostgreSQL", db, "PostgreSQL LISTEN connection down"},
		{"the broker", broker, "leader: broker connection down"},
	} {
		cut.proxy.Stop()
		testenv.WaitFor(t, 15*time.Second, "/statusz to say so with "+cut.what+" away", func() bool {
			code, body := get(base + "/statusz")
			return code == http.StatusServiceUnavailable && strings.Contains(body, cut.body)
		})
		if h, r, _ := probeCodes(base); h != 200 || r != 200 {
			t.Errorf("%s away: /healthz %d, /readyz %d; want 200, 200", cut.what, h, r)
		}
		if err := cut.proxy.Start(); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 30*time.Second, "/statusz to recover after "+cut.what+" came back", func() bool {
			code, body := get(base + "/statusz")
			return code == http.StatusOK && strings.HasPrefix(body, "leader")
		})
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
}

// TestReadyzFailsDuringShutdown holds a batch on the wire (the broker's
// traffic stalled in the proxy) and sends SIGTERM: while the relay waits
// for its confirms, /readyz answers 503 and /healthz 200.
func TestReadyzFailsDuringShutdown(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ex := e.Exchange(t, "ex", "topic")
	e.Queue(t, "q", ex, "#")
	broker, amqpURL := testenv.ProxyTo(t, testenv.ProxyBroker)
	env := baseEnv(e)
	env["OUTBOX_AMQP_URL"] = amqpURL
	env["OUTBOX_METRICS_ADDR"] = testenv.FreeAddr(t)
	env["OUTBOX_SHUTDOWN_TIMEOUT"] = "3s"
	base := "http://" + env["OUTBOX_METRICS_ADDR"]
	p := startRelay(t, env)
	testenv.WaitFor(t, 15*time.Second, "the relay to lead, connected", func() bool {
		code, body := get(base + "/statusz")
		return code == http.StatusOK && strings.HasPrefix(body, "leader")
	})

	if code, _ := get(base + "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before SIGTERM = %d, want 200", code)
	}
	js := `{"name": "stall", "type": "timeout", "stream": "upstream", "toxicity": 1, "attributes": {"timeout": 0}}`
	if _, err := broker.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Pool.Exec(context.Background(), `insert into `+e.Table.Ident()+` (exchange, routing_key, payload) values ($1, 'a', 'x')`, ex); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the batch to be claimed and sent", func() bool {
		m, err := harness.Scrape(context.Background(), env["OUTBOX_METRICS_ADDR"])
		n, _ := m.Value("outbox_batch_size_count")
		return err == nil && n >= 1
	})
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 2*time.Second, "/readyz to answer 503 while shutting down", func() bool {
		code, _ := get(base + "/readyz")
		return code == http.StatusServiceUnavailable
	})
	if code, body := get(base + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while shutting down = %d %q, want 200", code, body)
	}
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the relay did not exit after its shutdown timeout")
	}
	if p.err != nil {
		t.Errorf("exit after SIGTERM: %v, want 0", p.err)
	}
}
