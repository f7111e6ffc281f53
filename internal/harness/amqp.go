package harness

import (
	"cmp"
	"fmt"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/relay"
)

// AMQPDialTimeout bounds DialAMQP: the TCP connect and the AMQP handshake.
const AMQPDialTimeout = 10 * time.Second

// DialAMQP connects to RabbitMQ as the relay would in this program's
// environment: to the first node of a comma-separated OUTBOX_AMQP_URL
// (relay.AMQPURLDefault if unset), with the password from
// OUTBOX_AMQP_PASSWORD_FILE if set (re-read at each call), within
// AMQPDialTimeout. name is the connection's name on the broker
// (connection_name), by which CloseBrokerConnectionsNamed finds it. Its
// errors never hold the password. The caller closes the connection.
func DialAMQP(name string) (*amqp.Connection, error) {
	return dialAMQP(cmp.Or(os.Getenv("OUTBOX_AMQP_URL"), relay.AMQPURLDefault), os.Getenv("OUTBOX_AMQP_PASSWORD_FILE"), name)
}

func dialAMQP(urls, passwordFile, name string) (*amqp.Connection, error) {
	first, _, _ := strings.Cut(urls, ",")
	uri, err := amqp.ParseURI(strings.TrimSpace(first))
	if err != nil {
		// url.Parse errors echo the URL, password included.
		return nil, fmt.Errorf("OUTBOX_AMQP_URL: %w", relay.RedactURIError(err))
	}
	if passwordFile != "" {
		b, err := os.ReadFile(passwordFile)
		if err != nil {
			return nil, fmt.Errorf("OUTBOX_AMQP_PASSWORD_FILE: %w", err)
		}
		uri.Password = strings.TrimRight(string(b), "\r\n") // as the relay reads it
	}
	cfg := amqp.Config{Properties: amqp.NewConnectionProperties(), Dial: amqp.DefaultDial(AMQPDialTimeout)}
	cfg.Properties.SetClientConnectionName(name)
	conn, err := amqp.DialConfig(uri.String(), cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ at %s as %q: %w", relay.RedactAMQPURI(uri), name, err)
	}
	return conn, nil
}
