package relay

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// brokerTLS is the TLS configuration of Config for amqps:// URLs. A field
// left empty falls back to the URL's query parameter of the same meaning,
// as amqp091-go reads it (cacertfile, certfile, keyfile,
// server_name_indication).
type brokerTLS struct {
	caFile, certFile, keyFile, serverName string
}

func newBrokerTLS(c Config) brokerTLS {
	return brokerTLS{caFile: c.AMQPTLSCAFile, certFile: c.AMQPTLSCertFile, keyFile: c.AMQPTLSKeyFile, serverName: c.AMQPTLSServerName}
}

// tlsSetting is one TLS setting of a connection and where it was set, so
// that an error can say which setting to fix.
type tlsSetting struct{ value, from string }

func (s tlsSetting) String() string { return s.from + "=" + s.value }

// pick returns the Config value, named by its variable, else the URL's.
func pick(v, variable, fromURL, param string) tlsSetting {
	if v != "" {
		return tlsSetting{v, variable}
	}
	if fromURL != "" {
		return tlsSetting{fromURL, "OUTBOX_AMQP_URL's " + param}
	}
	return tlsSetting{}
}

func (b brokerTLS) ca(uri amqp.URI) tlsSetting {
	return pick(b.caFile, "OUTBOX_AMQP_TLS_CA_FILE", uri.CACertFile, "cacertfile")
}

func (b brokerTLS) cert(uri amqp.URI) tlsSetting {
	return pick(b.certFile, "OUTBOX_AMQP_TLS_CERT_FILE", uri.CertFile, "certfile")
}

func (b brokerTLS) key(uri amqp.URI) tlsSetting {
	return pick(b.keyFile, "OUTBOX_AMQP_TLS_KEY_FILE", uri.KeyFile, "keyfile")
}

// config reads the files and returns the TLS configuration for a
// connection to uri. It is called at every connect: rotated certificates
// are read again.
func (b brokerTLS) config(uri amqp.URI) (*tls.Config, error) {
	c := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Empty: amqp091-go sets the host dialled.
		ServerName: cmp.Or(b.serverName, uri.ServerName),
	}
	if ca := b.ca(uri); ca.value != "" {
		pem, err := os.ReadFile(ca.value)
		if err != nil {
			return nil, fmt.Errorf("read CA file (%s): %w", ca, err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file (%s) holds no PEM certificate", ca)
		}
	}
	cert, key := b.cert(uri), b.key(uri)
	switch {
	case cert.value != "" && key.value != "":
		pair, err := tls.LoadX509KeyPair(cert.value, key.value)
		if err != nil {
			// The error names what is wrong, never the key's bytes.
			return nil, fmt.Errorf("load client certificate (%s, %s): %w", cert, key, err)
		}
		c.Certificates = []tls.Certificate{pair}
	case cert.value != "" || key.value != "":
		return nil, errors.New("a client certificate needs both a certificate file and a key file " +
			"(OUTBOX_AMQP_TLS_CERT_FILE and OUTBOX_AMQP_TLS_KEY_FILE)")
	}
	return c, nil
}

// validateTLS checks the TLS fields against the URLs they apply to.
func (c Config) validateTLS(uris []amqp.URI) []error {
	var errs []error
	if (c.AMQPTLSCertFile == "") != (c.AMQPTLSKeyFile == "") {
		field, other := "AMQPTLSKeyFile", "AMQPTLSCertFile"
		if c.AMQPTLSKeyFile == "" {
			field, other = other, field
		}
		errs = append(errs, &FieldError{Field: field, Reason: "must be set together with", Than: other})
	}
	for _, f := range []struct{ field, v string }{
		{"AMQPTLSCAFile", c.AMQPTLSCAFile}, {"AMQPTLSCertFile", c.AMQPTLSCertFile},
		{"AMQPTLSKeyFile", c.AMQPTLSKeyFile}, {"AMQPTLSServerName", c.AMQPTLSServerName},
	} {
		if f.v == "" {
			continue
		}
		for _, u := range uris {
			if u.Scheme != "amqps" {
				// Set for nothing: amqp:// connections have no TLS.
				return append(errs, &FieldError{Field: f.field, Reason: "applies to amqps:// URLs only, and amqp:// is in", Than: "AMQPURL"})
			}
		}
	}
	return errs
}

// saslMechanisms returns the SASL mechanisms the URL's auth_mechanism asks
// for (amqp091-go's own reading of it, which the relay loses when it
// formats the URL again), or nil: PLAIN with the URL's user and password.
func saslMechanisms(uri amqp.URI) []amqp.Authentication {
	var auth []amqp.Authentication
	for _, m := range uri.AuthMechanism {
		switch strings.ToUpper(m) {
		case "PLAIN":
			auth = append(auth, uri.PlainAuth())
		case "AMQPLAIN":
			auth = append(auth, uri.AMQPlainAuth())
		case "EXTERNAL":
			auth = append(auth, &amqp.ExternalAuth{})
		}
	}
	return auth
}

// checkAuthMechanisms refuses an auth_mechanism amqp091-go cannot use. Like
// every error about the URL, it does not echo the URL's text.
func checkAuthMechanisms(uri amqp.URI) error {
	for _, m := range uri.AuthMechanism {
		switch strings.ToUpper(m) {
		case "PLAIN", "AMQPLAIN", "EXTERNAL":
		default:
			return errors.New("auth_mechanism: want plain, amqplain or external")
		}
	}
	return nil
}

// externalOnly reports whether uri authenticates by SASL EXTERNAL alone:
// the client certificate is the identity and no password is needed.
func externalOnly(uri amqp.URI) bool {
	auth := saslMechanisms(uri)
	return len(auth) == 1 && auth[0].Mechanism() == "EXTERNAL"
}

// describeTLSError says which TLS setting to check when the handshake
// failed, or returns nil when err is not a TLS failure.
func (b brokerTLS) describeTLSError(err error, uri amqp.URI) error {
	var unknownCA x509.UnknownAuthorityError
	var badName x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknownCA):
		from := "the system's CAs; set OUTBOX_AMQP_TLS_CA_FILE"
		if ca := b.ca(uri); ca.value != "" {
			from = ca.String()
		}
		return fmt.Errorf("broker certificate not trusted (%s): %w", from, err)
	case errors.As(err, &badName):
		return fmt.Errorf("broker certificate is not for %q (set OUTBOX_AMQP_TLS_SERVER_NAME to a name it holds): %w", badName.Host, err)
	case errors.As(err, &invalid):
		return fmt.Errorf("broker certificate not valid: %w", err)
	case isCertificateRefused(err):
		if cert := b.cert(uri); cert.value != "" {
			return fmt.Errorf("broker refused the client certificate (%s): %w", cert, err)
		}
		return fmt.Errorf("broker requires a client certificate (set OUTBOX_AMQP_TLS_CERT_FILE and OUTBOX_AMQP_TLS_KEY_FILE): %w", err)
	case errors.Is(err, amqp.ErrClosed) && b.cert(uri).value == "":
		// With TLS 1.3 a server refuses a client certificate after the
		// client's handshake is done; amqp091-go then sometimes reports
		// only that the connection closed, without the alert.
		return fmt.Errorf("broker closed the connection after the TLS handshake (if it requires a client certificate, "+
			"set OUTBOX_AMQP_TLS_CERT_FILE and OUTBOX_AMQP_TLS_KEY_FILE): %w", err)
	}
	return nil
}

// isCertificateRefused reports whether the server ended the TLS session
// over the client's certificate: missing, or signed by a CA it does not
// trust. crypto/tls reports a TLS alert received from the peer as a
// *net.OpError around an unexported type, so the alert is read from the
// text, as a last resort. With TLS 1.3 the alert arrives after the
// client's side of the handshake is done, at the first read.
func isCertificateRefused(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "remote error: tls: certificate required") ||
		strings.Contains(msg, "remote error: tls: bad certificate") ||
		strings.Contains(msg, "remote error: tls: unknown certificate authority")
}
