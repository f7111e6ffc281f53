package relay

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

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
	DatabaseURLDefault     = "postgres://postgres@localhost:5432/postgres"
	AMQPURLDefault         = "amqp://guest:guest@localhost:5672/"
)

// VacuumEveryDefault is outbox-relay's OUTBOX_VACUUM_EVERY when the variable
// is not set: a VACUUM after every 100,000 deleted rows. Unlike the
// constants above it is not what a zero VacuumEvery means: zero turns the
// relay's VACUUMs off, in Config as in the environment. Set VacuumEvery to
// it when the relay's role owns the table.
const VacuumEveryDefault = 100_000

// batchSizeMax is the largest BatchSize.
const batchSizeMax = 100_000

// Config configures a Relay. The zero value of every field means its
// default, except VacuumEvery, whose zero turns the relay's VACUUMs off.
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
	// AMQPTLSCAFile, AMQPTLSCertFile and AMQPTLSKeyFile are PEM files for
	// amqps:// URLs: the certificates of the CAs that sign the broker's
	// certificate (defaults to the system's), and the relay's client
	// certificate and its private key, set together (mutual TLS, and the
	// identity for SASL EXTERNAL). They are read at every connect, so
	// certificates rotated on disk are used from the next reconnect on.
	// Each takes precedence over the URL's query parameter of the same
	// meaning (cacertfile, certfile, keyfile), which applies when it is
	// empty.
	AMQPTLSCAFile   string
	AMQPTLSCertFile string
	AMQPTLSKeyFile  string
	// AMQPTLSServerName is the name the broker's certificate must carry and
	// the relay sends as SNI. It takes precedence over the URL's
	// server_name_indication. Defaults to the host of the URL dialled.
	AMQPTLSServerName string
	// Table is the outbox table. Defaults to schema.TableDefault in the
	// connection's current schema.
	Table schema.Table
	// BatchSize is how many rows one claim takes, 1 to 100000. Defaults to
	// BatchSizeDefault.
	BatchSize int
	// BatchBytes bounds the payload bytes of one batch; a row larger than
	// that goes out in a batch of its own. The relay holds the payloads of
	// one batch at a time (batches on the wire have dropped theirs), so
	// its memory follows BatchBytes and the largest row, not the backlog.
	// Claims ask for fewer rows than BatchSize when recent rows were
	// large. Defaults to BatchBytesDefault (8 MiB).
	BatchBytes int
	// PollInterval is how often the relay claims when no NOTIFY wakes it,
	// at least 1ms. Defaults to PollIntervalDefault.
	PollInterval time.Duration
	// MaxAttempts is how many failed publishes park a row as dead.
	// Defaults to MaxAttemptsDefault.
	MaxAttempts int
	// RetryBackoff is the delay after a row's first failed attempt; it
	// doubles with every further one, with jitter, up to RetryBackoffMax,
	// which must be at least RetryBackoff. Default to RetryBackoffDefault
	// and RetryBackoffMaxDefault.
	RetryBackoff    time.Duration
	RetryBackoffMax time.Duration
	// ConfirmTimeout bounds the wait for a batch's publisher confirms; rows
	// still unconfirmed then are treated as not sent and the broker
	// connection is reopened. Defaults to ConfirmTimeoutDefault.
	ConfirmTimeout time.Duration
	// ShutdownTimeout bounds how long Run waits, once its context is done,
	// for in-flight confirms to arrive and be settled. Defaults to
	// ShutdownTimeoutDefault.
	ShutdownTimeout time.Duration
	// MaxMessageSize is the largest body the relay publishes, in bytes;
	// larger rows fail without being sent. Set it to the broker's
	// max_message_size. Defaults to MaxMessageSizeDefault, the default of
	// RabbitMQ 4 (RabbitMQ 3 allowed 128 MiB).
	MaxMessageSize int
	// VacuumEvery is how many rows the relay deletes between its own
	// VACUUMs of the table, which keep the claim cheap while a large
	// backlog drains (autovacuum comes too seldom for that). Only possible
	// when the relay's role owns the table (or has MAINTAIN on it). Zero,
	// as OUTBOX_VACUUM_EVERY=0, turns them off and leaves the table to
	// autovacuum; negative is refused. outbox-relay sets
	// VacuumEveryDefault unless told otherwise.
	VacuumEvery int
	// AllowUnroutable publishes without the mandatory flag, so a message no
	// queue is bound for is dropped by the broker instead of being retried.
	// The zero value publishes with it (OUTBOX_MANDATORY=true).
	AllowUnroutable bool
	// MandatoryExcept lists the exchanges whose messages go without the
	// mandatory flag even while AllowUnroutable is false: names, or
	// path.Match patterns such as "socketio-*" (* does not match '/'). A
	// message to one of them that no queue takes is dropped by the broker
	// and its row deleted as published: right for fan-out events whose
	// listeners may all be gone for a while (every Socket.IO instance
	// restarting in a deploy), wrong for events somebody must get.
	MandatoryExcept []string
	// Partitions is the table's number of partitions (migration 007) that
	// the relay expects: a table recorded with another number is refused
	// at start, and a relay that finds it changed while it runs stops
	// with an error. Zero follows the table, whatever its number, and
	// through a change of it.
	Partitions int
	// AppID is the AMQP app-id of the messages whose row leaves app_id
	// null, at most 255 bytes. Empty sends none.
	AppID string
	// Name is the client connection name shown by the broker and the
	// application_name shown by PostgreSQL. Defaults to "outbox-relay".
	Name string
	// Logger receives the relay's logs. Defaults to discarding them.
	Logger *slog.Logger
	// Registerer receives the relay's metrics, each labelled with the
	// table. Defaults to none.
	Registerer prometheus.Registerer
	// TracerProvider, if set, receives a publish span per batch, linked to
	// each message's producer span (see NewTracerProviderFromEnv). Nil
	// turns tracing off, at no cost.
	TracerProvider trace.TracerProvider
	// Version and Revision label outbox_build_info: the release and the
	// source revision of the program running the relay (outbox-relay sets
	// its own). Empty labels when not set.
	Version, Revision string
}

// tracer returns the relay's tracer, nil without a TracerProvider.
func (c Config) tracer() trace.Tracer {
	if c.TracerProvider == nil {
		return nil
	}
	return c.TracerProvider.Tracer(tracerName, trace.WithInstrumentationVersion(c.Version))
}

// WithDefaults returns c with every zero field that has a default set to
// it, as New does before it checks c.
func (c Config) WithDefaults() Config { return c.withDefaults() }

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
	c.Name = cmp.Or(c.Name, "outbox-relay")
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// FieldError is a Config field whose value breaks one of Config's rules.
// Its message never holds the value, which may be a secret.
type FieldError struct {
	// Field is the name of the Config field, e.g. "BatchSize".
	Field string
	// Reason says what is wrong, e.g. "must be between 1 and 100000".
	Reason string
	// Than, if set, names the Config field that Reason compares Field
	// with, and ends the message: RetryBackoffMax "must be at least"
	// RetryBackoff.
	Than string
	// Err is the cause, if any, e.g. a URL's parse error, with any
	// password left out.
	Err error
}

// Error says which field is wrong and why, e.g. "BatchSize: must be
// between 1 and 100000".
func (e *FieldError) Error() string {
	return e.Field + ": " + e.Explain(func(field string) string { return field })
}

// Explain says why the field is wrong, calling the field it is compared
// with (if any) by name(field): a caller that reads Config from elsewhere
// can name its own settings.
func (e *FieldError) Explain(name func(field string) string) string {
	if e.Than == "" {
		return e.Reason
	}
	return e.Reason + " " + name(e.Than)
}

// Unwrap returns the cause, if any.
func (e *FieldError) Unwrap() error { return e.Err }

// Validate checks c as it stands, a zero field as zero, not as its
// default: it is for callers that fill in every field themselves (call
// WithDefaults first to check what New would run with). It returns one
// *FieldError for every broken rule, joined, or nil.
func (c Config) Validate() error { return c.validate() }

func (c Config) validate() error {
	var errs []error
	bad := func(field, reason string) { errs = append(errs, &FieldError{Field: field, Reason: reason}) }
	if pc, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		// pgx leaves the password out of its parse errors.
		errs = append(errs, &FieldError{Field: "DatabaseURL", Reason: err.Error(), Err: err})
	} else if _, err := deadSessionFrom(pc.ConnConfig.RuntimeParams); err != nil {
		errs = append(errs, &FieldError{Field: "DatabaseURL", Reason: err.Error(), Err: err})
	}
	if uris, err := parseAMQPURLs(c.AMQPURL); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, c.validateTLS(uris)...)
	}
	if c.BatchSize < 1 || c.BatchSize > batchSizeMax {
		bad("BatchSize", fmt.Sprintf("must be between 1 and %d", batchSizeMax))
	}
	if c.BatchBytes < 1 {
		bad("BatchBytes", "must be at least 1")
	}
	if c.PollInterval < time.Millisecond {
		bad("PollInterval", "must be at least 1ms")
	}
	if c.MaxAttempts < 1 {
		bad("MaxAttempts", "must be at least 1")
	}
	if c.RetryBackoff <= 0 {
		bad("RetryBackoff", "must be positive")
	} else if c.RetryBackoffMax < c.RetryBackoff {
		errs = append(errs, &FieldError{Field: "RetryBackoffMax", Reason: "must be at least", Than: "RetryBackoff"})
	}
	if c.ConfirmTimeout <= 0 {
		bad("ConfirmTimeout", "must be positive")
	}
	if c.MaxMessageSize < 1 {
		bad("MaxMessageSize", "must be at least 1")
	}
	if c.ShutdownTimeout <= 0 {
		bad("ShutdownTimeout", "must be positive")
	}
	if len(c.AppID) > maxShortstr {
		bad("AppID", fmt.Sprintf("must be at most %d bytes (an AMQP short string)", maxShortstr))
	}
	if c.Partitions < 0 || c.Partitions > schema.MaxPartitions {
		bad("Partitions", fmt.Sprintf("must be between 1 and %d, or 0 to follow the table", schema.MaxPartitions))
	}
	for _, p := range c.MandatoryExcept {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			bad("MandatoryExcept", fmt.Sprintf("%q is not an exchange name or pattern (path.Match syntax)", p))
			break
		}
	}
	if c.VacuumEvery < 0 {
		bad("VacuumEvery", "must be 0 (off) or more")
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
