package testenv

import (
	"net"
	"net/url"
	"strconv"
	"testing"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// Proxy targets.
const (
	ProxyBroker   = "broker"
	ProxyPostgres = "postgres"
)

// ProxyTo starts a TCP proxy (toxiproxy, in-process) on a free loopback
// port to the test broker (ProxyBroker) or the test PostgreSQL
// (ProxyPostgres), stopped at the end of the test, and returns it with the
// server's URL (AMQPURL or DatabaseURL) rewritten to go through it. Stop
// and Start cut the server off and back; toxics add latency, resets or
// stalls. Only the test's own connections go through it: the shared
// servers are never touched.
func ProxyTo(t testing.TB, target string) (*toxiproxy.Proxy, string) {
	t.Helper()
	switch target {
	case ProxyBroker:
		uri, err := amqp.ParseURI(AMQPURL())
		if err != nil {
			t.Fatal(err)
		}
		p := startProxy(t, target, net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
		host, port, _ := net.SplitHostPort(p.Listen)
		uri.Host = host
		uri.Port, _ = strconv.Atoi(port)
		return p, uri.String()
	case ProxyPostgres:
		u, err := url.Parse(DatabaseURL())
		if err != nil || u.Host == "" {
			t.Fatalf("OUTBOX_TEST_DATABASE_URL must be a URL to be proxied: %v", err)
		}
		port := u.Port()
		if port == "" {
			port = "5432"
		}
		p := startProxy(t, target, net.JoinHostPort(u.Hostname(), port))
		u.Host = p.Listen
		return p, u.String()
	}
	t.Fatalf("proxy to %q: want %q or %q", target, ProxyBroker, ProxyPostgres)
	return nil, ""
}

// startProxy starts a proxy on a free loopback port to upstream, stopped at
// the end of the test.
func startProxy(t testing.TB, name, upstream string) *toxiproxy.Proxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("start proxy to %s: %v", upstream, err)
	}
	t.Cleanup(p.Stop)
	return p
}
