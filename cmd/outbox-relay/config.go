package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/kelseyhightower/envconfig"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// envPrefix is the prefix of every environment variable.
const envPrefix = "OUTBOX"

// config is the relay's whole configuration, read from the environment.
// Every field names its variable in full; `outbox-relay -h` prints them.
type config struct {
	DatabaseURL      secretURL     `envconfig:"DATABASE_URL" default:"postgres://postgres@localhost:5432/postgres" desc:"PostgreSQL libpq URL or DSN; session-level (no transaction-mode pooler)"`
	AMQPURL          secretURL     `envconfig:"AMQP_URL" default:"amqp://guest:guest@localhost:5672/" desc:"RabbitMQ amqp:// or amqps:// URL; several cluster nodes comma-separated"`
	AMQPPasswordFile string        `envconfig:"AMQP_PASSWORD_FILE" desc:"file holding the broker password or OAuth2 token, re-read at every reconnect; overrides the URL's"`
	Table            string        `envconfig:"TABLE" default:"outbox" desc:"outbox table, optionally schema-qualified (schema.table; double-quote odd names)"`
	BatchSize        int           `envconfig:"BATCH_SIZE" default:"500" desc:"rows claimed and published per batch (1-100000)"`
	BatchBytes       int           `envconfig:"BATCH_BYTES" default:"8388608" desc:"payload bytes loaded per batch, at most; a larger row goes alone. The relay's memory follows it and the largest row, not the backlog"`
	PollInterval     time.Duration `envconfig:"POLL_INTERVAL" default:"1s" desc:"claim this often when no NOTIFY arrives"`
	MaxAttempts      int           `envconfig:"MAX_ATTEMPTS" default:"10" desc:"failed publishes after which a row is parked as dead"`
	RetryBackoff     time.Duration `envconfig:"RETRY_BACKOFF" default:"1s" desc:"delay after a row's first failed publish; doubles per attempt, with jitter"`
	RetryBackoffMax  time.Duration `envconfig:"RETRY_BACKOFF_MAX" default:"5m" desc:"longest delay between a row's attempts"`
	ConfirmTimeout   time.Duration `envconfig:"CONFIRM_TIMEOUT" default:"30s" desc:"longest wait for a batch's publisher confirms before reconnecting"`
	MaxMessageSize   int           `envconfig:"MAX_MESSAGE_SIZE" default:"16777216" desc:"largest payload in bytes published; set to the broker's max_message_size (16 MiB in RabbitMQ 4, 128 MiB in 3.x)"`
	VacuumEvery      int           `envconfig:"VACUUM_EVERY" default:"100000" desc:"rows deleted between the relay's own VACUUMs of the table, which keep claims cheap while a backlog drains (needs table ownership, or MAINTAIN on PostgreSQL 17); 0 leaves it to autovacuum"`
	Mandatory        bool          `envconfig:"MANDATORY" default:"true" desc:"publish with the mandatory flag: unroutable messages are retried, then parked dead"`
	MetricsAddr      string        `envconfig:"METRICS_ADDR" default:":9464" desc:"listen address of /metrics, /healthz and /readyz; empty turns it off"`
	LogLevel         string        `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	LogFormat        string        `envconfig:"LOG_FORMAT" default:"text" desc:"text (coloured on a terminal) or json"`
	ShutdownTimeout  time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"30s" desc:"on SIGTERM, longest wait for in-flight confirms"`

	table    schema.Table
	logLevel slog.Level
}

// secretURL is a URL that may hold a password. It formats as "REDACTED" so
// that it never reaches a log by accident.
type secretURL string

func (secretURL) String() string               { return "REDACTED" }
func (secretURL) LogValue() slog.Value         { return slog.StringValue("REDACTED") }
func (s secretURL) GoString() string           { return "REDACTED" }
func (s secretURL) reveal() string             { return string(s) }
func (s secretURL) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte("REDACTED")) }

// configError is a bad configuration value: one line naming the variable,
// exit code 2.
type configError struct {
	key string
	msg string
}

func (e *configError) Error() string { return envPrefix + "_" + e.key + ": " + e.msg }

// loadConfig reads and checks the environment. Its errors name the
// variable but never echo a value, which could be a secret.
func loadConfig() (*config, error) {
	var c config
	if err := envconfig.Process(envPrefix, &c); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return nil, &configError{key: pe.KeyName[len(envPrefix)+1:], msg: "not a valid " + describeType(pe.TypeName)}
		}
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	return &c, c.validate()
}

func describeType(t string) string {
	switch t {
	case "int":
		return "whole number"
	case "bool":
		return "boolean (true or false)"
	case "Duration":
		return "duration (e.g. 500ms, 1s, 5m)"
	}
	return t
}

func (c *config) validate() error {
	if _, err := pgxpool.ParseConfig(c.DatabaseURL.reveal()); err != nil {
		// pgx redacts passwords in its parse errors.
		return &configError{"DATABASE_URL", err.Error()}
	}
	n := 0
	for _, u := range strings.Split(c.AMQPURL.reveal(), ",") {
		if u = strings.TrimSpace(u); u == "" {
			continue
		}
		n++
		if _, err := amqp.ParseURI(u); err != nil {
			return &configError{"AMQP_URL", fmt.Sprintf("URL #%d: %s", n, relay.RedactURIError(err))}
		}
	}
	if n == 0 {
		return &configError{"AMQP_URL", "empty"}
	}
	if c.AMQPPasswordFile != "" {
		if _, err := os.ReadFile(c.AMQPPasswordFile); err != nil {
			return &configError{"AMQP_PASSWORD_FILE", "cannot be read: " + describeFileError(err)}
		}
	}
	t, err := schema.ParseTable(c.Table)
	if err != nil {
		return &configError{"TABLE", err.Error()}
	}
	c.table = t
	switch {
	case c.BatchSize < 1 || c.BatchSize > 100_000:
		return &configError{"BATCH_SIZE", "must be between 1 and 100000"}
	case c.BatchBytes < 1:
		return &configError{"BATCH_BYTES", "must be at least 1"}
	case c.PollInterval < time.Millisecond:
		return &configError{"POLL_INTERVAL", "must be at least 1ms"}
	case c.MaxAttempts < 1:
		return &configError{"MAX_ATTEMPTS", "must be at least 1"}
	case c.RetryBackoff <= 0:
		return &configError{"RETRY_BACKOFF", "must be positive"}
	case c.RetryBackoffMax < c.RetryBackoff:
		return &configError{"RETRY_BACKOFF_MAX", "must be at least OUTBOX_RETRY_BACKOFF"}
	case c.ConfirmTimeout <= 0:
		return &configError{"CONFIRM_TIMEOUT", "must be positive"}
	case c.MaxMessageSize < 1:
		return &configError{"MAX_MESSAGE_SIZE", "must be at least 1"}
	case c.ShutdownTimeout <= 0:
		return &configError{"SHUTDOWN_TIMEOUT", "must be positive"}
	case c.VacuumEvery < 0:
		return &configError{"VACUUM_EVERY", "must be 0 (off) or more"}
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return &configError{"METRICS_ADDR", "want host:port or :port"}
		}
	}
	if err := c.logLevel.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return &configError{"LOG_LEVEL", "want debug, info, warn or error"}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return &configError{"LOG_FORMAT", "want text or json"}
	}
	return nil
}

func describeFileError(err error) string {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "no such file"
	case errors.Is(err, os.ErrPermission):
		return "permission denied"
	}
	return err.Error()
}

// relayConfig maps the environment onto the relay's configuration.
func (c *config) relayConfig(log *slog.Logger) relay.Config {
	return relay.Config{
		DatabaseURL:      c.DatabaseURL.reveal(),
		AMQPURL:          c.AMQPURL.reveal(),
		AMQPPasswordFile: c.AMQPPasswordFile,
		Table:            c.table,
		BatchSize:        c.BatchSize,
		BatchBytes:       c.BatchBytes,
		PollInterval:     c.PollInterval,
		MaxAttempts:      c.MaxAttempts,
		RetryBackoff:     c.RetryBackoff,
		RetryBackoffMax:  c.RetryBackoffMax,
		ConfirmTimeout:   c.ConfirmTimeout,
		ShutdownTimeout:  c.ShutdownTimeout,
		MaxMessageSize:   c.MaxMessageSize,
		VacuumEvery:      cmp.Or(c.VacuumEvery, -1), // 0 here means off
		AllowUnroutable:  !c.Mandatory,
		Logger:           log,
	}
}
