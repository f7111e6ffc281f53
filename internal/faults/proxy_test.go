//go:build faults

package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// How long each proxy fault lasts.
const (
	latencyHold = 3 * time.Second
	resetHold   = time.Second
	cutHold     = time.Second
	// stallHold outlasts the relay's OUTBOX_CONFIRM_TIMEOUT (5s) and its
	// listener ping (every 5s, 5s timeout), so that both give up on the
	// stalled connections during the stall.
	stallHold = 7 * time.Second
	latencyMS = 50
)

// TestProxyFaults puts a TCP proxy (toxiproxy, in-process) between the relay
// and the broker, or between the relay and PostgreSQL, and under load adds
// 50ms of latency, resets connections, cuts the proxy off (refusing new
// connections too), or stalls all traffic past the relay's timeouts, then
// heals. The producer and the consumer talk to the servers directly.
func TestProxyFaults(t *testing.T) {
	for _, target := range []string{"broker", "postgres"} {
		t.Run(target, func(t *testing.T) {
			for _, f := range proxyFaults {
				t.Run(f.name, func(t *testing.T) {
					s := newScenario(t, "proxy_"+target+"_"+f.name)
					proxy, extra := proxyTo(t, target)
					s.startLoad()
					r := s.startRelay(extra)
					s.waitFlowing("relay through the proxy")
					for i := range f.times {
						time.Sleep(faultSpacing) // spaces the faults
						s.backlog(burst)
						healed, from := f.apply(t, s, proxy)
						s.recovered(fmt.Sprintf("%s healed (%d)", f.name, i+1), healed, from)
					}
					if f.name == "stall" && target == "broker" && r.Output().Count("no confirms within") == 0 {
						t.Logf("note: the stall did not catch a batch waiting for confirms")
					}
					s.finish(0)
				})
			}
		})
	}
}

// proxyFault is one kind of network fault: apply strikes, lasts, heals, and
// returns when it healed and the consumer's mark then.
type proxyFault struct {
	name  string
	times int
	apply func(t *testing.T, s *scenario, p *toxiproxy.Proxy) (healed time.Time, from int)
}

var proxyFaults = []proxyFault{
	{name: "latency", times: 1, apply: func(t *testing.T, s *scenario, p *toxiproxy.Proxy) (time.Time, int) {
		// Deliveries go on, slower.
		addToxic(t, p, "latency_up", "latency", "upstream", fmt.Sprintf(`{"latency": %d}`, latencyMS))
		addToxic(t, p, "latency_down", "latency", "downstream", fmt.Sprintf(`{"latency": %d}`, latencyMS))
		from := s.cons.mark()
		time.Sleep(latencyHold) // the fault lasts
		n := s.cons.mark() - from
		t.Logf("latency %dms each way: %d messages delivered in %s", latencyMS, n, latencyHold)
		if n == 0 {
			t.Errorf("nothing delivered during %s with %dms of latency", latencyHold, latencyMS)
		}
		healed, from := time.Now(), s.cons.mark()
		removeToxic(t, p, "latency_up")
		removeToxic(t, p, "latency_down")
		return healed, from
	}},
	{name: "reset", times: 2, apply: func(t *testing.T, s *scenario, p *toxiproxy.Proxy) (time.Time, int) {
		// Every connection that carries a byte is reset (RST).
		addToxic(t, p, "reset_up", "reset_peer", "upstream", `{"timeout": 0}`)
		addToxic(t, p, "reset_down", "reset_peer", "downstream", `{"timeout": 0}`)
		time.Sleep(resetHold) // the fault lasts
		healed, from := time.Now(), s.cons.mark()
		removeToxic(t, p, "reset_up")
		removeToxic(t, p, "reset_down")
		return healed, from
	}},
	{name: "cut", times: 2, apply: func(t *testing.T, s *scenario, p *toxiproxy.Proxy) (time.Time, int) {
		// The proxy closes every connection and refuses new ones.
		p.Stop()
		time.Sleep(cutHold) // the fault lasts
		if err := p.Start(); err != nil {
			t.Fatalf("restart proxy: %v", err)
		}
		return time.Now(), s.cons.mark()
	}},
	{name: "stall", times: 1, apply: func(t *testing.T, s *scenario, p *toxiproxy.Proxy) (time.Time, int) {
		// Connections stay open and carry nothing, past the relay's
		// timeouts; healing closes them.
		addToxic(t, p, "stall_up", "timeout", "upstream", `{"timeout": 0}`)
		addToxic(t, p, "stall_down", "timeout", "downstream", `{"timeout": 0}`)
		time.Sleep(stallHold) // the fault lasts
		healed, from := time.Now(), s.cons.mark()
		removeToxic(t, p, "stall_up")
		removeToxic(t, p, "stall_down")
		return healed, from
	}},
}

// proxyTo starts a proxy to the broker or to PostgreSQL and returns the
// relay environment that goes through it.
func proxyTo(t *testing.T, target string) (*toxiproxy.Proxy, map[string]string) {
	t.Helper()
	p, u := testenv.ProxyTo(t, target)
	if target == testenv.ProxyBroker {
		return p, map[string]string{"OUTBOX_AMQP_URL": u}
	}
	return p, map[string]string{"OUTBOX_DATABASE_URL": u}
}

func addToxic(t *testing.T, p *toxiproxy.Proxy, name, kind, stream, attributes string) {
	t.Helper()
	js := fmt.Sprintf(`{"name": %q, "type": %q, "stream": %q, "toxicity": 1, "attributes": %s}`, name, kind, stream, attributes)
	if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		t.Fatalf("add toxic %s: %v", name, err)
	}
}

// freeze holds all of p's traffic, both ways, as a stopped proxy would:
// connections stay open, and nothing is dropped (see testenv.Freeze).
// A test that ends frozen thaws at its end, before the proxy stops.
func freeze(t *testing.T, p *toxiproxy.Proxy) {
	t.Helper()
	addToxic(t, p, "freeze_up", testenv.Freeze, "upstream", `{}`)
	addToxic(t, p, "freeze_down", testenv.Freeze, "downstream", `{}`)
	t.Cleanup(func() { p.Toxics.ResetToxics(context.Background()) })
}

// thaw lets through, in order, what freeze held, and the traffic after it.
func thaw(t *testing.T, p *toxiproxy.Proxy) {
	t.Helper()
	removeToxic(t, p, "freeze_up")
	removeToxic(t, p, "freeze_down")
}

func removeToxic(t *testing.T, p *toxiproxy.Proxy, name string) {
	t.Helper()
	if err := p.Toxics.RemoveToxic(context.Background(), name); err != nil {
		t.Fatalf("remove toxic %s: %v", name, err)
	}
}
