package relay

import (
	"cmp"
	"errors"
	"fmt"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// splitURLs splits a comma-separated list of broker URLs.
func splitURLs(s string) []string {
	var urls []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}

// parseAMQPURLs parses a comma-separated list of broker URLs. Its error
// names the URL by its place in the list and leaves the password out.
func parseAMQPURLs(s string) ([]amqp.URI, error) {
	var uris []amqp.URI
	for i, u := range splitURLs(s) {
		uri, err := amqp.ParseURI(u)
		if err != nil {
			err = RedactURIError(err)
		} else {
			err = checkAuthMechanisms(uri)
		}
		if err != nil {
			return nil, &FieldError{Field: "AMQPURL", Reason: fmt.Sprintf("URL #%d: %s", i+1, err), Err: err}
		}
		uris = append(uris, uri)
	}
	if len(uris) == 0 {
		return nil, &FieldError{Field: "AMQPURL", Reason: "empty"}
	}
	return uris, nil
}

// RedactAMQPURI formats uri without its password, for logs and errors. The
// password shows as "xxxxx" ("guest:@" read as an empty password).
func RedactAMQPURI(uri amqp.URI) string {
	if uri.Password != "" {
		uri.Password = "xxxxx"
	}
	return uri.String()
}

// RedactURIError keeps only the kind of parse error: url.Parse errors echo
// the URL, password included. amqp091-go's URI errors are unexported, so the
// kind is read from the text, as a last resort.
func RedactURIError(err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "scheme"):
		return errors.New("scheme must be amqp:// or amqps://")
	case strings.Contains(msg, "whitespace"):
		return errors.New("URL must not contain whitespace")
	}
	return errors.New("malformed URL (want amqp://user:password@host:port/vhost)")
}

// describeDialError makes the broker's terse refusals say what to check. The
// broker reports both a bad vhost and bad credentials as ACCESS_REFUSED and
// tells them apart only in its reply text.
func describeDialError(err error, uri amqp.URI, b brokerTLS) error {
	if uri.Scheme == "amqps" {
		if d := b.describeTLSError(err, uri); d != nil {
			return d
		}
	}
	if errors.Is(err, amqp.ErrSASL) {
		return fmt.Errorf("%w (the broker offers none of the mechanisms asked for: auth_mechanism=%s; "+
			"RabbitMQ offers EXTERNAL with the rabbitmq_auth_mechanism_ssl plugin)", err, cmp.Or(strings.Join(uri.AuthMechanism, ","), "plain"))
	}
	var ae *amqp.Error
	if !errors.As(err, &ae) {
		return err
	}
	switch {
	case externalOnly(uri) && ae.Code == amqp.AccessRefused:
		return fmt.Errorf("%w (the broker refused SASL EXTERNAL: check that its TLS listener verifies peers and that "+
			"a user named after the client certificate's subject exists)", err)
	case strings.Contains(ae.Reason, "vhost") || ae.Code == amqp.NotAllowed:
		return fmt.Errorf("%w (check that vhost %q exists and user %q may use it)", err, uri.Vhost, uri.Username)
	case ae.Code == amqp.AccessRefused:
		return fmt.Errorf("%w (check user %q and its password)", err, uri.Username)
	}
	return err
}
