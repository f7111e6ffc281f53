package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// envPrefix is the prefix of every environment variable.
const envPrefix = "OUTBOX"

// Defaults of the variables that are the command's own; the others are the
// relay library's (see defaultConfig).
const (
	metricsAddrDefault = ":9464"
	logLevelDefault    = "info"
	logFormatDefault   = "text"
)

// config is the relay's whole configuration, read from the environment.
// Every field names its variable in full; `outbox-relay -h` prints them.
// The fields have no default tags: loadConfig starts from defaultConfig,
// and a variable that is set replaces its field, zero included.
type config struct {
	DatabaseURL       secretURL     `envconfig:"DATABASE_URL" desc:"PostgreSQL libpq URL or DSN; session-level (no transaction-mode pooler)"`
	AMQPURL           secretURL     `envconfig:"AMQP_URL" desc:"RabbitMQ amqp:// or amqps:// URL; several cluster nodes comma-separated"`
	AMQPPasswordFile  string        `envconfig:"AMQP_PASSWORD_FILE" desc:"file holding the broker password or OAuth2 token, re-read at every reconnect; overrides the URL's"`
	AMQPTLSCAFile     string        `envconfig:"AMQP_TLS_CA_FILE" desc:"amqps://: PEM file of the CAs that sign the broker's certificate (default: the system's), re-read at every reconnect; overrides the URL's cacertfile"`
	AMQPTLSCertFile   string        `envconfig:"AMQP_TLS_CERT_FILE" desc:"amqps://: PEM client certificate (mutual TLS; the identity for auth_mechanism=external), re-read at every reconnect; overrides the URL's certfile"`
	AMQPTLSKeyFile    string        `envconfig:"AMQP_TLS_KEY_FILE" desc:"amqps://: PEM private key of OUTBOX_AMQP_TLS_CERT_FILE, re-read at every reconnect; overrides the URL's keyfile"`
	AMQPTLSServerName string        `envconfig:"AMQP_TLS_SERVER_NAME" desc:"amqps://: name the broker's certificate must hold, sent as SNI (default: the URL's host); overrides the URL's server_name_indication"`
	Table             string        `envconfig:"TABLE" desc:"outbox table, optionally schema-qualified (schema.table; double-quote odd names)"`
	InboxTable        string        `envconfig:"INBOX_TABLE" desc:"inbox migrate and prune: the consumers' inbox table in OUTBOX_DATABASE_URL, optionally schema-qualified"`
	BatchSize         int           `envconfig:"BATCH_SIZE" desc:"rows claimed and published per batch (1-100000)"`
	BatchBytes        int           `envconfig:"BATCH_BYTES" desc:"payload bytes loaded per batch, at most; a larger row goes alone. The relay's memory follows it and the largest row, not the backlog"`
	PollInterval      time.Duration `envconfig:"POLL_INTERVAL" desc:"claim this often when no NOTIFY arrives"`
	MaxAttempts       int           `envconfig:"MAX_ATTEMPTS" desc:"failed publishes after which a row is parked as dead"`
	RetryBackoff      time.Duration `envconfig:"RETRY_BACKOFF" desc:"delay after a row's first failed publish; doubles per attempt, with jitter"`
	RetryBackoffMax   time.Duration `envconfig:"RETRY_BACKOFF_MAX" desc:"longest delay between a row's attempts"`
	ConfirmTimeout    time.Duration `envconfig:"CONFIRM_TIMEOUT" desc:"longest wait for a batch's publisher confirms before reconnecting"`
	MaxMessageSize    int           `envconfig:"MAX_MESSAGE_SIZE" desc:"largest payload in bytes published; set to the broker's max_message_size (16 MiB in RabbitMQ 4, 128 MiB in 3.x)"`
	VacuumEvery       int           `envconfig:"VACUUM_EVERY" desc:"rows deleted between the relay's own VACUUMs of the table, which keep claims cheap while a backlog drains (needs table ownership, or MAINTAIN on PostgreSQL 17); 0 leaves it to autovacuum"`
	Partitions        int           `envconfig:"PARTITIONS" desc:"the table's number of partitions (1-256), which relays share: migrate records it (default 12 for a table it creates); a relay refuses a table recorded with another. Unset, a relay follows the table"`
	AppID             string        `envconfig:"APP_ID" desc:"AMQP app-id of messages whose row leaves app_id null (at most 255 bytes); empty sends none"`
	Mandatory         bool          `envconfig:"MANDATORY" desc:"publish with the mandatory flag: unroutable messages are retried, then parked dead"`
	MandatoryExcept   []string      `envconfig:"MANDATORY_EXCEPT" desc:"exchanges published without the mandatory flag all the same, comma-separated names or patterns (socketio-*): a message no queue takes is dropped by the broker, for fan-out whose listeners may all be gone"`
	MetricsAddr       string        `envconfig:"METRICS_ADDR" desc:"listen address of /metrics and the probes /healthz, /readyz and /statusz; empty turns it off"`
	LogLevel          string        `envconfig:"LOG_LEVEL" desc:"debug, info, warn or error"`
	LogFormat         string        `envconfig:"LOG_FORMAT" desc:"text (coloured on a terminal) or json"`
	ShutdownTimeout   time.Duration `envconfig:"SHUTDOWN_TIMEOUT" desc:"on SIGTERM, longest wait for in-flight confirms"`

	table      schema.Table
	inboxTable schema.Table
	logLevel   slog.Level
}

// envField names the variable of each relay.Config field that the relay
// checks, for its *relay.FieldError: the rules are the relay's, the names
// are the command's.
var envField = map[string]string{
	"DatabaseURL":       "DATABASE_URL",
	"AMQPURL":           "AMQP_URL",
	"AMQPTLSCAFile":     "AMQP_TLS_CA_FILE",
	"AMQPTLSCertFile":   "AMQP_TLS_CERT_FILE",
	"AMQPTLSKeyFile":    "AMQP_TLS_KEY_FILE",
	"AMQPTLSServerName": "AMQP_TLS_SERVER_NAME",
	"BatchSize":         "BATCH_SIZE",
	"BatchBytes":        "BATCH_BYTES",
	"PollInterval":      "POLL_INTERVAL",
	"MaxAttempts":       "MAX_ATTEMPTS",
	"RetryBackoff":      "RETRY_BACKOFF",
	"RetryBackoffMax":   "RETRY_BACKOFF_MAX",
	"ConfirmTimeout":    "CONFIRM_TIMEOUT",
	"MaxMessageSize":    "MAX_MESSAGE_SIZE",
	"ShutdownTimeout":   "SHUTDOWN_TIMEOUT",
	"VacuumEvery":       "VACUUM_EVERY",
	"AppID":             "APP_ID",
	"Partitions":        "PARTITIONS",
	"MandatoryExcept":   "MANDATORY_EXCEPT",
}

// defaultConfig is the configuration with no variable set: the relay
// library's defaults, and the command's own for the rest. `-h` prints it.
func defaultConfig() config {
	d := relay.Config{}.WithDefaults()
	return config{
		DatabaseURL:     secretURL(d.DatabaseURL),
		AMQPURL:         secretURL(d.AMQPURL),
		Table:           d.Table.Name,
		BatchSize:       d.BatchSize,
		BatchBytes:      d.BatchBytes,
		PollInterval:    d.PollInterval,
		MaxAttempts:     d.MaxAttempts,
		RetryBackoff:    d.RetryBackoff,
		RetryBackoffMax: d.RetryBackoffMax,
		ConfirmTimeout:  d.ConfirmTimeout,
		MaxMessageSize:  d.MaxMessageSize,
		// The library's zero VacuumEvery is off, as the variable's 0 is;
		// the command vacuums unless told not to.
		VacuumEvery:     relay.VacuumEveryDefault,
		Mandatory:       !d.AllowUnroutable,
		MetricsAddr:     metricsAddrDefault,
		LogLevel:        logLevelDefault,
		LogFormat:       logFormatDefault,
		ShutdownTimeout: d.ShutdownTimeout,
		InboxTable:      inbox.TableDefault,
	}
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
	c := defaultConfig()
	if err := envconfig.Process(envPrefix, &c); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return nil, &configError{key: pe.KeyName[len(envPrefix)+1:], msg: describeParseError(pe)}
		}
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	return &c, c.validate()
}

// describeParseError says what a value of the variable should look like,
// without the value, which could be a secret.
func describeParseError(pe *envconfig.ParseError) string {
	switch pe.TypeName {
	case "int":
		return "not a whole number"
	case "bool":
		return "not a boolean; want true or false"
	case "time.Duration":
		if _, err := strconv.ParseFloat(os.Getenv(pe.KeyName), 64); err == nil {
			return "a number without a unit; want a duration such as 500ms, 30s or 5m"
		}
		return "not a duration; want a duration such as 500ms, 30s or 5m"
	}
	return "not a valid " + pe.TypeName
}

// validate checks what the relay library does not (the table's name, the
// password file, the command's own variables) and has the library check
// the rest, naming the variable of a field it refuses.
func (c *config) validate() error {
	for _, f := range []struct{ key, path string }{
		{"AMQP_PASSWORD_FILE", c.AMQPPasswordFile},
		{"AMQP_TLS_CA_FILE", c.AMQPTLSCAFile},
		{"AMQP_TLS_CERT_FILE", c.AMQPTLSCertFile},
		{"AMQP_TLS_KEY_FILE", c.AMQPTLSKeyFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.ReadFile(f.path); err != nil {
			return &configError{f.key, "cannot be read: " + describeFileError(err)}
		}
	}
	t, err := schema.ParseTable(c.Table)
	if err != nil {
		return &configError{"TABLE", err.Error()}
	}
	c.table = t
	if c.inboxTable, err = schema.ParseTable(c.InboxTable); err != nil {
		return &configError{"INBOX_TABLE", err.Error()}
	}
	if err := c.relayConfig(nil).Validate(); err != nil {
		var fe *relay.FieldError
		if !errors.As(err, &fe) || envField[fe.Field] == "" {
			return fmt.Errorf("check configuration: %w", err)
		}
		// The library explains the first field it refuses; the value is
		// not part of that.
		return &configError{envField[fe.Field], fe.Explain(func(field string) string { return envPrefix + "_" + envField[field] })}
	}
	if v, set := os.LookupEnv(envPrefix + "_PARTITIONS"); set && v != "" && c.Partitions == 0 {
		// The library's 0 follows the table; the variable says so by
		// being unset.
		return &configError{"PARTITIONS", fmt.Sprintf("must be between 1 and %d; leave it unset to follow the table", schema.MaxPartitions)}
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
	// Tracing follows the OpenTelemetry variables; one the relay cannot
	// honour is a bad value too (the error names it).
	if _, err := relay.TracingFromEnv(); err != nil {
		return err
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

// relayConfig maps the environment onto the relay's configuration. Every
// field is set, from the variable or from defaultConfig, so a variable set
// to zero reaches the library as zero, for it to check.
func (c *config) relayConfig(log *slog.Logger) relay.Config {
	return relay.Config{
		DatabaseURL:       c.DatabaseURL.reveal(),
		AMQPURL:           c.AMQPURL.reveal(),
		AMQPPasswordFile:  c.AMQPPasswordFile,
		AMQPTLSCAFile:     c.AMQPTLSCAFile,
		AMQPTLSCertFile:   c.AMQPTLSCertFile,
		AMQPTLSKeyFile:    c.AMQPTLSKeyFile,
		AMQPTLSServerName: c.AMQPTLSServerName,
		Table:             c.table,
		BatchSize:         c.BatchSize,
		BatchBytes:        c.BatchBytes,
		PollInterval:      c.PollInterval,
		MaxAttempts:       c.MaxAttempts,
		RetryBackoff:      c.RetryBackoff,
		RetryBackoffMax:   c.RetryBackoffMax,
		ConfirmTimeout:    c.ConfirmTimeout,
		ShutdownTimeout:   c.ShutdownTimeout,
		MaxMessageSize:    c.MaxMessageSize,
		VacuumEvery:       c.VacuumEvery,
		AppID:             c.AppID,
		Partitions:        c.Partitions,
		// The one place OUTBOX_MANDATORY meets the library's flag, whose
		// zero value (false) is OUTBOX_MANDATORY=true.
		AllowUnroutable: !c.Mandatory,
		MandatoryExcept: c.MandatoryExcept,
		Logger:          log,
	}
}

// notOurs are OUTBOX_ variables of this repository's tests and tooling, not
// the relay's: a relay started by them is not warned of them.
var notOurs = []string{"OUTBOX_TEST_", "OUTBOX_SKIP_SERVICES", "OUTBOX_FAULTS_BIN", "OUTBOX_POISON_SEED"}

// unknownVariables names the OUTBOX_ variables of environ that no setting
// reads, each with the known variable it is probably a typo of, e.g.
// "OUTBOX_BATCHSIZE (did you mean OUTBOX_BATCH_SIZE?), OUTBOX_COLOR"; ""
// when there is none. Other prefixes (OTEL_, PG...) are not ours.
func unknownVariables(environ []string) string {
	known := map[string]bool{}
	var names []string
	ct := reflect.TypeOf(config{})
	for i := range ct.NumField() {
		if key := ct.Field(i).Tag.Get("envconfig"); key != "" {
			known[envPrefix+"_"+key] = true
			names = append(names, envPrefix+"_"+key)
		}
	}
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix+"_") || known[name] || slices.ContainsFunc(notOurs, func(p string) bool {
			return strings.HasPrefix(name, p)
		}) {
			continue
		}
		if s := closest(name, names); s != "" {
			name += " (did you mean " + s + "?)"
		}
		unknown = append(unknown, name)
	}
	slices.Sort(unknown)
	return strings.Join(unknown, ", ")
}

// closest returns the name in names that name is likely a typo of: the
// same letters but for underscores and case, or at most two edits away;
// "" when none is.
func closest(name string, names []string) string {
	squash := func(s string) string { return strings.ToUpper(strings.ReplaceAll(s, "_", "")) }
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(squash(name), squash(n)); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
