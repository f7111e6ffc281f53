package relay_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// A zero field gets its default; a set one is kept. VacuumEvery and
// AllowUnroutable have no default: their zero values are "off" and
// "mandatory".
func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	d := relay.Config{}.WithDefaults()
	for _, tc := range []struct {
		field    string
		got, def any
	}{
		{"DatabaseURL", d.DatabaseURL, relay.DatabaseURLDefault},
		{"AMQPURL", d.AMQPURL, relay.AMQPURLDefault},
		{"AMQPPasswordFile", d.AMQPPasswordFile, ""},
		{"Table", d.Table, schema.Table{Name: schema.TableDefault}},
		{"BatchSize", d.BatchSize, relay.BatchSizeDefault},
		{"BatchBytes", d.BatchBytes, relay.BatchBytesDefault},
		{"PollInterval", d.PollInterval, relay.PollIntervalDefault},
		{"MaxAttempts", d.MaxAttempts, relay.MaxAttemptsDefault},
		{"RetryBackoff", d.RetryBackoff, relay.RetryBackoffDefault},
		{"RetryBackoffMax", d.RetryBackoffMax, relay.RetryBackoffMaxDefault},
		{"ConfirmTimeout", d.ConfirmTimeout, relay.ConfirmTimeoutDefault},
		{"ShutdownTimeout", d.ShutdownTimeout, relay.ShutdownTimeoutDefault},
		{"MaxMessageSize", d.MaxMessageSize, relay.MaxMessageSizeDefault},
		{"VacuumEvery", d.VacuumEvery, 0},
		{"AllowUnroutable", d.AllowUnroutable, false},
		{"Name", d.Name, "outbox-relay"},
	} {
		if !reflect.DeepEqual(tc.got, tc.def) {
			t.Errorf("zero %s became %v, want %v", tc.field, tc.got, tc.def)
		}
	}
	if d.Logger == nil {
		t.Error("zero Logger stayed nil")
	}
	if err := d.Validate(); err != nil {
		t.Errorf("the defaults do not validate: %v", err)
	}

	set := relay.Config{
		DatabaseURL: "postgres://x@h/db", AMQPURL: "amqp://h/", Table: schema.Table{Schema: "s", Name: "t"},
		BatchSize: 7, BatchBytes: 8, PollInterval: 9 * time.Millisecond, MaxAttempts: 3,
		RetryBackoff: time.Millisecond, RetryBackoffMax: time.Second, ConfirmTimeout: time.Second,
		ShutdownTimeout: time.Second, MaxMessageSize: 10, VacuumEvery: 11, AllowUnroutable: true, Name: "n",
	}
	got := set.WithDefaults()
	got.Logger = nil
	if !reflect.DeepEqual(got, set) {
		t.Errorf("WithDefaults changed set fields:\n got %+v\nwant %+v", got, set)
	}
}

func TestValidateFieldErrors(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-Pa55"
	for _, tc := range []struct {
		name   string
		change func(*relay.Config)
		field  string // "" for valid
		want   string // the whole message
	}{
		{"defaults", func(*relay.Config) {}, "", ""},
		{"empty DSN is libpq's defaults", func(c *relay.Config) { c.DatabaseURL = "" }, "", ""},
		{"bad database port", func(c *relay.Config) { c.DatabaseURL = "postgres://u:" + secret + "@h:notaport/db" }, "DatabaseURL", ""},
		{"bad sslmode", func(c *relay.Config) { c.DatabaseURL = "postgres://u:" + secret + "@h/db?sslmode=bogus" }, "DatabaseURL", ""},
		{"no broker URL", func(c *relay.Config) { c.AMQPURL = " , " }, "AMQPURL", "AMQPURL: empty"},
		{"broker scheme", func(c *relay.Config) { c.AMQPURL = "http://u:" + secret + "@h/" }, "AMQPURL", "AMQPURL: URL #1: scheme must be amqp:// or amqps://"},
		{"second broker URL", func(c *relay.Config) { c.AMQPURL = "amqp://h/, amqp://u:" + secret + "@h:x/" }, "AMQPURL",
			"AMQPURL: URL #2: malformed URL (want amqp://user:password@host:port/vhost)"},
		{"several broker URLs", func(c *relay.Config) { c.AMQPURL = "amqp://a/,amqps://b:5671/v" }, "", ""},
		{"batch size 1", func(c *relay.Config) { c.BatchSize = 1 }, "", ""},
		{"batch size 100000", func(c *relay.Config) { c.BatchSize = 100_000 }, "", ""},
		{"batch size 0", func(c *relay.Config) { c.BatchSize = 0 }, "BatchSize", "BatchSize: must be between 1 and 100000"},
		{"batch size 100001", func(c *relay.Config) { c.BatchSize = 100_001 }, "BatchSize", "BatchSize: must be between 1 and 100000"},
		{"batch bytes 0", func(c *relay.Config) { c.BatchBytes = 0 }, "BatchBytes", "BatchBytes: must be at least 1"},
		{"poll 999us", func(c *relay.Config) { c.PollInterval = 999 * time.Microsecond }, "PollInterval", "PollInterval: must be at least 1ms"},
		{"poll 1ms", func(c *relay.Config) { c.PollInterval = time.Millisecond }, "", ""},
		{"max attempts 0", func(c *relay.Config) { c.MaxAttempts = 0 }, "MaxAttempts", "MaxAttempts: must be at least 1"},
		{"retry backoff 0", func(c *relay.Config) { c.RetryBackoff = 0 }, "RetryBackoff", "RetryBackoff: must be positive"},
		{"retry backoff max below", func(c *relay.Config) { c.RetryBackoff, c.RetryBackoffMax = time.Second, time.Millisecond },
			"RetryBackoffMax", "RetryBackoffMax: must be at least RetryBackoff"},
		{"retry backoff max equal", func(c *relay.Config) { c.RetryBackoff, c.RetryBackoffMax = time.Second, time.Second }, "", ""},
		{"confirm timeout 0", func(c *relay.Config) { c.ConfirmTimeout = 0 }, "ConfirmTimeout", "ConfirmTimeout: must be positive"},
		{"max message size 0", func(c *relay.Config) { c.MaxMessageSize = 0 }, "MaxMessageSize", "MaxMessageSize: must be at least 1"},
		{"shutdown timeout 0", func(c *relay.Config) { c.ShutdownTimeout = 0 }, "ShutdownTimeout", "ShutdownTimeout: must be positive"},
		{"shutdown timeout negative", func(c *relay.Config) { c.ShutdownTimeout = -time.Second }, "ShutdownTimeout", "ShutdownTimeout: must be positive"},
		{"vacuum off", func(c *relay.Config) { c.VacuumEvery = 0 }, "", ""},
		{"vacuum every 100000", func(c *relay.Config) { c.VacuumEvery = relay.VacuumEveryDefault }, "", ""},
		{"vacuum negative", func(c *relay.Config) { c.VacuumEvery = -1 }, "VacuumEvery", "VacuumEvery: must be 0 (off) or more"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := relay.Config{}.WithDefaults()
			tc.change(&c)
			err := c.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var fe *relay.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("Validate = %v; want a *FieldError for %s", err, tc.field)
			}
			if tc.want != "" && err.Error() != tc.want {
				t.Errorf("Validate = %q, want %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), tc.field+": ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("Validate = %q: want one line starting with %s", err, tc.field)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Validate shows the password: %q", err)
			}
		})
	}
}

// Validate reports every broken rule, in field order, and New refuses
// what Validate refuses after the defaults are filled in.
func TestValidateJoinsEveryField(t *testing.T) {
	t.Parallel()
	c := relay.Config{BatchSize: -1, MaxAttempts: -1, VacuumEvery: -1}
	var fields []string
	for _, e := range c.WithDefaults().Validate().(interface{ Unwrap() []error }).Unwrap() {
		var fe *relay.FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("%v is not a *FieldError", e)
		}
		fields = append(fields, fe.Field)
	}
	if want := []string{"BatchSize", "MaxAttempts", "VacuumEvery"}; !reflect.DeepEqual(fields, want) {
		t.Errorf("fields %v, want %v", fields, want)
	}
	_, err := relay.New(c)
	var fe *relay.FieldError
	if !errors.As(err, &fe) || fe.Field != "BatchSize" {
		t.Errorf("New = %v; want a *FieldError for BatchSize", err)
	}
	if _, err := relay.New(relay.Config{}); err != nil {
		t.Errorf("New(Config{}) = %v", err)
	}
}

// A caller that reads Config from elsewhere names the fields its own way.
func TestConfigFieldErrorExplain(t *testing.T) {
	t.Parallel()
	c := relay.Config{RetryBackoff: time.Minute, RetryBackoffMax: time.Second}.WithDefaults()
	var fe *relay.FieldError
	if !errors.As(c.Validate(), &fe) {
		t.Fatal("no *FieldError")
	}
	name := func(f string) string { return "<" + f + ">" }
	if got, want := fe.Explain(name), "must be at least <RetryBackoff>"; got != want {
		t.Errorf("Explain = %q, want %q", got, want)
	}
	cause := errors.New("cause")
	if fe := (&relay.FieldError{Field: "X", Reason: "bad", Err: cause}); !errors.Is(fe, cause) || fe.Error() != "X: bad" {
		t.Errorf("%v: Unwrap or Error wrong", fe)
	}
}
