package relay_test

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
)

// brokerAddr is the host:port of the test broker, for the TLS proxy.
func brokerAddr(t *testing.T) string {
	t.Helper()
	uri, err := amqp.ParseURI(testenv.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
}

// amqpsURL is an amqps:// URL of the proxy with the test broker's user and
// password, and query appended.
func amqpsURL(t *testing.T, p *tlsProxy, query url.Values) string {
	t.Helper()
	uri, err := amqp.ParseURI(testenv.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	u := url.URL{Scheme: "amqps", User: url.UserPassword(uri.Username, uri.Password), Host: p.addr, Path: "/", RawQuery: query.Encode()}
	return u.String()
}

// A relay publishes through a TLS listener that verifies its client
// certificate, whether the TLS settings come from Config (the variables),
// which win over the URL's parameters, or from the URL alone.
func TestTLSPublishWithClientCertificate(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	for _, tc := range []struct {
		name  string
		query url.Values
		set   func(*relay.Config)
	}{
		{"variables win over the URL", url.Values{
			// Each of these alone would fail the handshake.
			"cacertfile":             {pki.otherCA},
			"server_name_indication": {"wrong.example"},
			"certfile":               {"/nonexistent/client.pem"},
			"keyfile":                {"/nonexistent/client-key.pem"},
		}, func(c *relay.Config) {
			c.AMQPTLSCAFile, c.AMQPTLSCertFile, c.AMQPTLSKeyFile, c.AMQPTLSServerName = pki.caFile, pki.certFile, pki.keyFile, serverName
		}},
		{"URL parameters alone", url.Values{
			"cacertfile":             {pki.caFile},
			"server_name_indication": {serverName},
			"certfile":               {pki.certFile},
			"keyfile":                {pki.keyFile},
		}, func(*relay.Config) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			proxy := startTLSProxy(t, pki, brokerAddr(t), false)
			cfg := b.config(t)
			cfg.AMQPURL = amqpsURL(t, proxy, tc.query)
			tc.set(&cfg)
			start(t, cfg)
			insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "k", payload: []byte("over TLS")})
			if d := testenv.Receive(t, b.recv, 1, 15*time.Second)[0]; string(d.Body) != "over TLS" {
				t.Errorf("received %q", d.Body)
			}
			if _, mechs := proxy.seen(); len(mechs) == 0 || mechs[0] != "PLAIN" {
				t.Errorf("mechanisms chosen through the proxy: %v, want PLAIN", mechs)
			}
		})
	}
}

// The TLS files are read at every connect: a CA file fixed on disk is
// used at the next reconnect, without a restart.
func TestTLSFilesReadAtEveryConnect(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	b := setup(t)
	proxy := startTLSProxy(t, pki, brokerAddr(t), false)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	copyFile(t, pki.otherCA, caFile)
	logs, logger := testenv.BufferedLogger(t)
	cfg := b.config(t)
	cfg.Logger = logger
	cfg.AMQPURL = amqpsURL(t, proxy, nil)
	cfg.AMQPTLSCAFile, cfg.AMQPTLSCertFile, cfg.AMQPTLSKeyFile, cfg.AMQPTLSServerName = caFile, pki.certFile, pki.keyFile, serverName
	start(t, cfg)
	testenv.WaitFor(t, 15*time.Second, "the wrong CA refused", func() bool {
		return strings.Contains(logs.String(), "broker certificate not trusted")
	})
	copyFile(t, pki.caFile, caFile)
	insert(t, b.env.Pool, b, row{exchange: b.exchange, key: "k", payload: []byte("after the fix")})
	testenv.Receive(t, b.recv, 1, 20*time.Second)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A broker certificate from an unknown CA, and a missing client
// certificate, fail with an error that names the cause and the setting to
// fix, and never the password.
func TestTLSFailuresSayWhy(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	const secret = "tls-Secr3t-pw"
	for _, tc := range []struct {
		name    string
		set     func(*relay.Config)
		want    []string
		refused string // the proxy's handshake error, if it refuses
	}{
		{"wrong CA", func(c *relay.Config) {
			c.AMQPTLSCAFile, c.AMQPTLSCertFile, c.AMQPTLSKeyFile = pki.otherCA, pki.certFile, pki.keyFile
		}, []string{"broker certificate not trusted (OUTBOX_AMQP_TLS_CA_FILE=" + pki.otherCA + "): ", "x509: "}, ""},
		{"no client certificate", func(c *relay.Config) {
			c.AMQPTLSCAFile = pki.caFile
			// The alert itself, or (amqp091-go loses it at times) a hint.
		}, []string{"client certificate", "set OUTBOX_AMQP_TLS_CERT_FILE and OUTBOX_AMQP_TLS_KEY_FILE)"},
			"client didn't provide a certificate"},
		{"wrong server name", func(c *relay.Config) {
			c.AMQPTLSCAFile, c.AMQPTLSCertFile, c.AMQPTLSKeyFile = pki.caFile, pki.certFile, pki.keyFile
			c.AMQPTLSServerName = "other.example"
		}, []string{"broker certificate is not for", "other.example", "(set OUTBOX_AMQP_TLS_SERVER_NAME to a name it holds)"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			proxy := startTLSProxy(t, pki, brokerAddr(t), false)
			logs, logger := testenv.BufferedLogger(t)
			cfg := b.config(t)
			cfg.Logger = logger
			cfg.AMQPURL = "amqps://guest:" + secret + "@" + proxy.addr + "/?server_name_indication=" + serverName
			tc.set(&cfg)
			start(t, cfg)
			testenv.WaitFor(t, 15*time.Second, "broker connect failed", func() bool {
				return strings.Contains(logs.String(), "broker connect failed")
			})
			for _, w := range tc.want {
				if !strings.Contains(logs.String(), w) {
					t.Errorf("logs lack %q:\n%s", w, logs)
				}
			}
			if strings.Contains(logs.String(), secret) {
				t.Errorf("logs show the password")
			}
			if refused, _ := proxy.seen(); tc.refused != "" && (len(refused) == 0 || !strings.Contains(refused[0].Error(), tc.refused)) {
				t.Errorf("proxy refused %v, want %q", refused, tc.refused)
			}
		})
	}
}

// With auth_mechanism=external in the URL the relay authenticates with
// SASL EXTERNAL and needs no password. The test broker's plain listener
// behind the proxy offers no EXTERNAL: the relay says so. Where the proxy
// offers it, as a broker with rabbitmq_auth_mechanism_ssl would, the
// relay's Connection.StartOk names EXTERNAL, and the broker, which cannot
// use it on a plain listener, refuses it: the relay says that too.
func TestTLSExternalAuth(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	for _, tc := range []struct {
		name      string
		advertise bool
		want      string
		mechs     []string
	}{
		{"broker offers no EXTERNAL", false, "the broker offers none of the mechanisms asked for: auth_mechanism=external", nil},
		{"broker offers EXTERNAL", true, "the broker refused SASL EXTERNAL", []string{"EXTERNAL"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			proxy := startTLSProxy(t, pki, brokerAddr(t), tc.advertise)
			logs, logger := testenv.BufferedLogger(t)
			cfg := b.config(t)
			cfg.Logger = logger
			// No user, no password: the certificate is the identity.
			cfg.AMQPURL = "amqps://" + proxy.addr + "/?auth_mechanism=external"
			cfg.AMQPPasswordFile = "/nonexistent/password" // not needed, so not read
			cfg.AMQPTLSCAFile, cfg.AMQPTLSCertFile, cfg.AMQPTLSKeyFile, cfg.AMQPTLSServerName = pki.caFile, pki.certFile, pki.keyFile, serverName
			start(t, cfg)
			testenv.WaitFor(t, 15*time.Second, "broker connect failed", func() bool {
				return strings.Contains(logs.String(), "broker connect failed")
			})
			if !strings.Contains(logs.String(), tc.want) || strings.Contains(logs.String(), "password file") {
				t.Errorf("logs lack %q:\n%s", tc.want, logs)
			}
			// The first connection's only: the relay may have retried since.
			if _, mechs := proxy.seen(); strings.Join(mechs[:min(len(mechs), 1)], ",") != strings.Join(tc.mechs, ",") {
				t.Errorf("Connection.StartOk named %v, want %v", mechs, tc.mechs)
			}
		})
	}
}

// The TLS fields are checked against each other and the URLs, and an
// auth_mechanism amqp091-go cannot use is refused before connecting.
func TestTLSConfigRules(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg   relay.Config
		field string
	}{
		{relay.Config{AMQPURL: "amqps://h/", AMQPTLSCertFile: "c.pem"}, "AMQPTLSCertFile: must be set together with AMQPTLSKeyFile"},
		{relay.Config{AMQPURL: "amqps://h/", AMQPTLSKeyFile: "k.pem"}, "AMQPTLSKeyFile: must be set together with AMQPTLSCertFile"},
		{relay.Config{AMQPURL: "amqps://h/,amqp://g/", AMQPTLSCAFile: "ca.pem"}, "AMQPTLSCAFile: applies to amqps:// URLs only, and amqp:// is in AMQPURL"},
		{relay.Config{AMQPURL: "amqps://h/?auth_mechanism=kerberos"}, "AMQPURL: URL #1: auth_mechanism: want plain, amqplain or external"},
	} {
		err := tc.cfg.WithDefaults().Validate()
		if err == nil || err.Error() != tc.field {
			t.Errorf("%+v: got %v, want %q", tc.cfg, err, tc.field)
		}
	}
	ok := relay.Config{AMQPURL: "amqps://h/?auth_mechanism=external", AMQPTLSCAFile: "ca.pem", AMQPTLSCertFile: "c.pem",
		AMQPTLSKeyFile: "k.pem", AMQPTLSServerName: "h"}
	if err := ok.WithDefaults().Validate(); err != nil {
		t.Errorf("%+v: %v", ok, err)
	}
}
