package main

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/relay"
)

func TestBadConfigExits2NamingTheVariable(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-Pa55"
	for _, tc := range []struct{ key, value string }{
		{"BATCH_SIZE", "lots"},
		{"BATCH_SIZE", "0"},
		{"POLL_INTERVAL", "fast"},
		{"POLL_INTERVAL", "0s"},
		{"MAX_ATTEMPTS", "0"},
		{"DATABASE_URL", "postgres://u:" + secret + "@host:notaport/db"},
		{"DATABASE_URL", "postgres://u:" + secret + "@host/db?sslmode=bogus"},
		{"AMQP_URL", "http://u:" + secret + "@host/"},
		{"AMQP_URL", "amqp://u:" + secret + "@host:notaport/"},
		{"AMQP_URL", "amqp://guest:guest@localhost/, amqp://u:" + secret + "@h:x/"},
		{"AMQP_PASSWORD_FILE", "/nonexistent/" + secret},
		{"AMQP_TLS_CA_FILE", "/nonexistent/" + secret},
		{"AMQP_TLS_KEY_FILE", "/nonexistent/" + secret},
		{"AMQP_TLS_SERVER_NAME", "broker.example"}, // amqp://, no TLS
		{"AMQP_URL", "amqps://h/?auth_mechanism=" + secret},
		{"TABLE", "a.b.c"},
		{"TABLE", `"unterminated`},
		{"TABLE", strings.Repeat("t", 60)},
		{"INBOX_TABLE", "a.b.c"},
		{"INBOX_TABLE", `"unterminated`},
		{"MANDATORY", "maybe"},
		{"METRICS_ADDR", "nonsense"},
		{"LOG_LEVEL", "loud"},
		{"LOG_FORMAT", "xml"},
		{"SHUTDOWN_TIMEOUT", "-1s"},
		{"RETRY_BACKOFF_MAX", "1ms"},
		// Refused by the relay library's rules, reported by the variable's
		// name: a variable set to zero is zero, not the default.
		{"BATCH_SIZE", "100001"},
		{"BATCH_BYTES", "0"},
		{"RETRY_BACKOFF", "0s"},
		{"CONFIRM_TIMEOUT", "0s"},
		{"MAX_MESSAGE_SIZE", "0"},
		{"SHUTDOWN_TIMEOUT", "0s"},
		{"VACUUM_EVERY", "-1"},
		{"APP_ID", strings.Repeat("a", 256)},
		{"PARTITIONS", "0"},
		{"PARTITIONS", "-1"},
		{"PARTITIONS", "257"},
		{"PARTITIONS", "many"},
		{"MANDATORY_EXCEPT", "socketio-["},
		{"MANDATORY_EXCEPT", "a,,b"},
		{"AMQP_URL", ""},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			t.Parallel()
			// The database and broker URLs point nowhere: a bad value must
			// stop the binary before it tries to connect.
			env := map[string]string{
				"OUTBOX_DATABASE_URL": "postgres://postgres@127.0.0.1:1/none",
				"OUTBOX_AMQP_URL":     "amqp://guest:guest@127.0.0.1:1/",
				"OUTBOX_" + tc.key:    tc.value,
			}
			begin := time.Now()
			stdout, stderr, code := runBin(t, env, "run")
			if code != exitUsage {
				t.Errorf("exit code %d, want %d; stderr: %s", code, exitUsage, stderr)
			}
			if took := time.Since(begin); took > 5*time.Second {
				t.Errorf("took %s: it should fail before connecting", took)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			if lines := strings.Count(strings.TrimSpace(stderr), "\n") + 1; lines != 1 || !strings.Contains(stderr, "OUTBOX_"+tc.key+":") {
				t.Errorf("stderr = %q; want one line naming OUTBOX_%s", stderr, tc.key)
			}
			if strings.Contains(stderr, secret) {
				t.Errorf("stderr shows the secret: %q", stderr)
			}
		})
	}
}

// A duration without a unit, or not a duration, says what one looks like.
func TestBadDurationShowsAnExample(t *testing.T) {
	t.Parallel()
	for value, want := range map[string]string{
		"5":    "outbox-relay: OUTBOX_POLL_INTERVAL: a number without a unit; want a duration such as 500ms, 30s or 5m\n",
		"fast": "outbox-relay: OUTBOX_POLL_INTERVAL: not a duration; want a duration such as 500ms, 30s or 5m\n",
	} {
		_, stderr, code := runBin(t, map[string]string{"OUTBOX_POLL_INTERVAL": value}, "status")
		if code != exitUsage || stderr != want {
			t.Errorf("OUTBOX_POLL_INTERVAL=%s: exit %d, stderr\n got %q\nwant %q", value, code, stderr, want)
		}
	}
}

// helpDefaults is every variable's default as DESIGN.md and the README's
// configuration table state it: the contract -h must keep.
var helpDefaults = map[string]string{
	"DATABASE_URL":         "postgres://postgres@localhost:5432/postgres",
	"AMQP_URL":             "amqp://guest:guest@localhost:5672/",
	"AMQP_PASSWORD_FILE":   "",
	"AMQP_TLS_CA_FILE":     "",
	"AMQP_TLS_CERT_FILE":   "",
	"AMQP_TLS_KEY_FILE":    "",
	"AMQP_TLS_SERVER_NAME": "",
	"TABLE":                "outbox",
	"INBOX_TABLE":          "inbox",
	"BATCH_SIZE":           "500",
	"BATCH_BYTES":          "8388608",
	"POLL_INTERVAL":        "1s",
	"MAX_ATTEMPTS":         "10",
	"RETRY_BACKOFF":        "1s",
	"RETRY_BACKOFF_MAX":    "5m",
	"CONFIRM_TIMEOUT":      "30s",
	"MAX_MESSAGE_SIZE":     "16777216",
	"VACUUM_EVERY":         "100000",
	"APP_ID":               "",
	"PARTITIONS":           "",
	"MANDATORY":            "true",
	"MANDATORY_EXCEPT":     "",
	"METRICS_ADDR":         ":9464",
	"LOG_LEVEL":            "info",
	"LOG_FORMAT":           "text",
	"SHUTDOWN_TIMEOUT":     "30s",
}

func TestHelpListsEveryVariable(t *testing.T) {
	t.Parallel()
	stdout, _, code := runBin(t, nil, "-h")
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	ct := reflect.TypeOf(config{})
	keys := 0
	for i := range ct.NumField() {
		f := ct.Field(i)
		key := f.Tag.Get("envconfig")
		if key == "" {
			continue
		}
		keys++
		def, ok := helpDefaults[key]
		if !ok {
			t.Errorf("OUTBOX_%s: no default in helpDefaults", key)
			continue
		}
		desc := f.Tag.Get("desc")
		line := ""
		for _, l := range strings.Split(stdout, "\n") {
			if rest, ok := strings.CutPrefix(l, "OUTBOX_"+key+" "); ok {
				line = strings.TrimSpace(rest)
			}
		}
		// The line is the default, then the meaning.
		shown, meaning, _ := strings.Cut(line, "  ")
		if def == "" {
			shown, meaning = "", line
		}
		if desc == "" || shown != def || strings.TrimSpace(meaning) != desc {
			t.Errorf("-h does not document OUTBOX_%s with its default %q and meaning:\n%s", key, def, stdout)
		}
	}
	if keys != len(helpDefaults) {
		t.Errorf("config has %d variables, helpDefaults %d", keys, len(helpDefaults))
	}
}

func TestUnknownCommandExits2(t *testing.T) {
	t.Parallel()
	_, stderr, code := runBin(t, nil, "frobnicate")
	if code != exitUsage || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	_, stderr, code = runBin(t, nil, "status", "-o", "yaml")
	if code != exitUsage || !strings.Contains(stderr, "want table or json") {
		t.Errorf("status -o yaml: exit %d, stderr %q", code, stderr)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	stdout, _, code := runBin(t, nil, "version")
	if code != 0 || !strings.HasPrefix(stdout, "outbox-relay ") {
		t.Errorf("exit %d, stdout %q", code, stdout)
	}
}

// clearEnv unsets every OUTBOX_ variable for the test.
func clearEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "OUTBOX_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

// Unset variables are the library's defaults; OUTBOX_VACUUM_EVERY=0 is the
// library's zero (off) and OUTBOX_MANDATORY=false its AllowUnroutable.
func TestRelayConfigFromEnvironment(t *testing.T) {
	clearEnv(t)
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	got := c.relayConfig(nil)
	want := relay.Config{VacuumEvery: relay.VacuumEveryDefault}.WithDefaults()
	got.Logger, want.Logger, want.Name = nil, nil, ""
	if !reflect.DeepEqual(got, want) {
		t.Errorf("no variable set:\n got %+v\nwant %+v", got, want)
	}

	t.Setenv("OUTBOX_VACUUM_EVERY", "0")
	t.Setenv("OUTBOX_MANDATORY", "false")
	t.Setenv("OUTBOX_BATCH_SIZE", "7")
	t.Setenv("OUTBOX_APP_ID", "billing")
	if c, err = loadConfig(); err != nil {
		t.Fatal(err)
	}
	if rc := c.relayConfig(nil); rc.VacuumEvery != 0 || !rc.AllowUnroutable || rc.BatchSize != 7 || rc.AppID != "billing" {
		t.Errorf("VacuumEvery %d, AllowUnroutable %t, BatchSize %d, AppID %q; want 0, true, 7, billing", rc.VacuumEvery, rc.AllowUnroutable, rc.BatchSize, rc.AppID)
	}
}

// Every field the library checks has a variable to be reported by.
func TestEnvFieldNamesVariables(t *testing.T) {
	t.Parallel()
	tags := map[string]bool{}
	ct := reflect.TypeOf(config{})
	for i := range ct.NumField() {
		tags[ct.Field(i).Tag.Get("envconfig")] = true
	}
	rt := reflect.TypeOf(relay.Config{})
	for field, key := range envField {
		if _, ok := rt.FieldByName(field); !ok || !tags[key] {
			t.Errorf("envField[%q] = %q: want a relay.Config field and a variable", field, key)
		}
	}
	// A Config whose every checked field is wrong: each error maps.
	bad := relay.Config{AMQPURL: ",", DatabaseURL: "postgres://h:x/", BatchSize: -1, BatchBytes: -1, PollInterval: -1,
		MaxAttempts: -1, RetryBackoff: -1, ConfirmTimeout: -1, MaxMessageSize: -1, ShutdownTimeout: -1, VacuumEvery: -1,
		AppID: strings.Repeat("a", 256)}
	errs := bad.Validate().(interface{ Unwrap() []error }).Unwrap()
	bad.RetryBackoff = time.Second
	bad.RetryBackoffMax = time.Millisecond
	errs = append(errs, bad.Validate().(interface{ Unwrap() []error }).Unwrap()...)
	for _, err := range errs {
		var fe *relay.FieldError
		if !errors.As(err, &fe) || envField[fe.Field] == "" {
			t.Errorf("%v: not a field with a variable", err)
		}
	}
}
