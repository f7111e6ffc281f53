package relay

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/schema"
)

// Defaults for Config fields left at their zero value.
const (
	BatchSizeDefault       = 500
	BatchBytesDefault      = 8 << 20
	PollIntervalDefault    = time.Second
	MaxAttemptsDefault     = 10
	RetryBackoffDefault    = time.Second
	RetryBackoffMaxDefault = 5 * time.Minute
	ShutdownTimeoutDefault = 30 * time.Second
	ConfirmTimeoutDefault  = 30 * time.Second
	MaxMessageSizeDefault  = 16 << 20 // RabbitMQ 4's default max_message_size
	VacuumEveryDefault     = 100_000
	DatabaseURLDefault     = "postgres://postgres@localhost:5432/postgres"
	AMQPURLDefault         = "amqp://guest:guest@localhost:5672/"
)

// Config configures a Relay. The zero value of every field means its default.
type Config struct {
	// DatabaseURL is a libpq URL or DSN. The relay's connections must be
	// session-level (LISTEN and advisory locks do not survive a
	// transaction-mode pooler). Defaults to DatabaseURLDefault.
	DatabaseURL string
	// AMQPURL is one or more comma-separated amqp:// or amqps:// URLs of
	// nodes of one cluster; reconnects move on to the next. Defaults to
	// AMQPURLDefault.
	AMQPURL string
	// AMQPPasswordFile, if set, holds the broker password (or an OAuth2
	// access token used as one). It is re-read at every connect and
	// overrides the password in AMQPURL.
	AMQPPasswordFile string
	// Table is the outbox table. Defaults to "outbox" in the connection's
	// current schema.
	Table schema.Table
	// BatchSize is how many rows one claim takes. Defaults to 500.
	BatchSize int
	// BatchBytes bounds the payload bytes of one batch; a row larger than
	// that goes out in a batch of its own. The relay holds the payloads of
	// one batch at a time (batches on the wire have dropped theirs), so
	// its memory follows BatchBytes and the largest row, not the backlog.
	// Claims ask for fewer rows than BatchSize when recent rows were
	// large. Defaults to 8 MiB.
	BatchBytes int
	// PollInterval is how often the relay claims when no NOTIFY wakes it.
	// Defaults to 1s.
	PollInterval time.Duration
	// MaxAttempts is how many failed publishes park a row as dead.
	// Defaults to 10.
	MaxAttempts int
	// RetryBackoff is the delay after a row's first failed attempt; it
	// doubles with every further one, with jitter, up to RetryBackoffMax.
	// Defaults to 1s and 5m.
	RetryBackoff    time.Duration
	RetryBackoffMax time.Duration
	// ConfirmTimeout bounds the wait for a batch's publisher confirms; rows
	// still unconfirmed then are treated as not sent and the broker
	// connection is reopened. Defaults to 30s.
	ConfirmTimeout time.Duration
	// ShutdownTimeout bounds how long Run waits, once its context is done,
	// for in-flight confirms to arrive and be settled. Defaults to 30s.
	ShutdownTimeout time.Duration
	// MaxMessageSize is the largest body the relay publishes, in bytes;
	// larger rows fail without being sent. Set it to the broker's
	// max_message_size. Defaults to 16 MiB, the default of RabbitMQ 4
	// (RabbitMQ 3 allowed 128 MiB).
	MaxMessageSize int
	// VacuumEvery is how many rows the relay deletes between its own
	// VACUUMs of the table, which keep the claim cheap while a large
	// backlog drains (autovacuum comes too seldom for that). Only possible
	// when the relay's role owns the table. Negative turns it off.
	// Defaults to 100000.
	VacuumEvery int
	// AllowUnroutable publishes without the mandatory flag, so a message no
	// queue is bound for is dropped by the broker instead of being retried.
	AllowUnroutable bool
	// Name is the client connection name shown by the broker and the
	// application_name shown by PostgreSQL. Defaults to "outbox-relay".
	Name string
	// Logger receives the relay's logs. Defaults to discarding them.
	Logger *slog.Logger
	// Registerer receives the relay's metrics. Defaults to none.
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	c.DatabaseURL = cmp.Or(c.DatabaseURL, DatabaseURLDefault)
	c.AMQPURL = cmp.Or(c.AMQPURL, AMQPURLDefault)
	if c.Table.Name == "" {
		c.Table.Name = schema.TableDefault
	}
	c.BatchSize = cmp.Or(c.BatchSize, BatchSizeDefault)
	c.BatchBytes = cmp.Or(c.BatchBytes, BatchBytesDefault)
	c.PollInterval = cmp.Or(c.PollInterval, PollIntervalDefault)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, MaxAttemptsDefault)
	c.RetryBackoff = cmp.Or(c.RetryBackoff, RetryBackoffDefault)
	c.RetryBackoffMax = cmp.Or(c.RetryBackoffMax, RetryBackoffMaxDefault)
	c.ConfirmTimeout = cmp.Or(c.ConfirmTimeout, ConfirmTimeoutDefault)
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, ShutdownTimeoutDefault)
	c.MaxMessageSize = cmp.Or(c.MaxMessageSize, MaxMessageSizeDefault)
	c.VacuumEvery = cmp.Or(c.VacuumEvery, VacuumEveryDefault)
	c.Name = cmp.Or(c.Name, "outbox-relay")
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.BatchSize < 1 || c.BatchSize > 100_000 {
		errs = append(errs, fmt.Errorf("BatchSize %d: want 1 to 100000", c.BatchSize))
	}
	if c.BatchBytes < 1 {
		errs = append(errs, fmt.Errorf("BatchBytes %d: want at least 1", c.BatchBytes))
	}
	if c.PollInterval < time.Millisecond {
		errs = append(errs, fmt.Errorf("PollInterval %s: want at least 1ms", c.PollInterval))
	}
	if c.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("MaxAttempts %d: want at least 1", c.MaxAttempts))
	}
	if c.RetryBackoff <= 0 || c.RetryBackoffMax < c.RetryBackoff {
		errs = append(errs, fmt.Errorf("RetryBackoff %s, RetryBackoffMax %s: want 0 < min <= max", c.RetryBackoff, c.RetryBackoffMax))
	}
	if c.ConfirmTimeout <= 0 || c.ShutdownTimeout < 0 {
		errs = append(errs, errors.New("ConfirmTimeout and ShutdownTimeout must be positive"))
	}
	if c.MaxMessageSize < 1 {
		errs = append(errs, fmt.Errorf("MaxMessageSize %d: want at least 1", c.MaxMessageSize))
	}
	return errors.Join(errs...)
}

// backoff returns the delay before attempt n+1 after n failed attempts
// (n >= 1): base·2^(n-1), capped at max, with "equal jitter" (half fixed, half
// random) so that rows failing together do not retry in lockstep.
func backoff(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	half := d / 2
	return half + rand.N(d-half+1)
}
