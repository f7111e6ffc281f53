package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// TestDialAMQPRedacts: whether the URL does not parse or the broker
// refuses the password, the error does not show the password.
func TestDialAMQPRedacts(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"amqp://guest:S3cret-pw@127.0.0.1:notaport/",
		"http://guest:S3cret-pw@127.0.0.1:5672/",
		"amqp://guest:S3cret-pw@127.0.0.1:5672/, amqp://guest:guest@127.0.0.1:5672/", // the first node only
	} {
		conn, err := dialAMQP(url, "", "harness-"+t.Name())
		if err == nil {
			_ = conn.Close()
			t.Errorf("dialAMQP(%q) connected", url)
			continue
		}
		if strings.Contains(err.Error(), "S3cret-pw") {
			t.Errorf("dialAMQP(%q) = %v: the error shows the password", url, err)
		}
	}
}

// TestDialAMQPPasswordFile: the password file wins over the URL's
// password, as it does for the relay.
func TestDialAMQPPasswordFile(t *testing.T) {
	t.Parallel()
	uri, err := amqp.ParseURI(testenv.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte(uri.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uri.Password = "not-the-password"
	conn, err := dialAMQP(uri.String(), pwFile, "harness-"+t.Name())
	if err != nil {
		t.Fatalf("dialAMQP with the password in a file: %v", err)
	}
	_ = conn.Close()
	if _, err := dialAMQP(uri.String(), filepath.Join(t.TempDir(), "absent"), "x"); err == nil || !strings.Contains(err.Error(), "OUTBOX_AMQP_PASSWORD_FILE") {
		t.Errorf("dialAMQP with a missing password file = %v; want an error naming OUTBOX_AMQP_PASSWORD_FILE", err)
	}
}
