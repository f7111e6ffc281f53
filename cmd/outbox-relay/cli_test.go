package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// Every command's -h, -help and --help prints its usage to stdout and exits
// 0, whatever the environment holds.
func TestHelpOfEveryCommand(t *testing.T) {
	t.Parallel()
	env := map[string]string{"OUTBOX_POLL_INTERVAL": "5"} // a bad value must not hide the help
	for _, args := range [][]string{
		{"-h"}, {"--help"}, {"help"},
		{"run", "-h"}, {"run", "--help"},
		{"migrate", "-h"}, {"migrate", "-help"},
		{"status", "-h"}, {"status", "--help"},
		{"dead", "-h"}, {"dead", "--help"}, {"dead", "help"},
		{"dead", "list", "-h"}, {"dead", "retry", "-h"}, {"dead", "purge", "--help"},
		{"dead", "retry", "5", "-h"},
		{"inbox", "-h"}, {"inbox", "--help"}, {"inbox", "help"},
		{"inbox", "migrate", "-h"}, {"inbox", "prune", "-help"}, {"inbox", "prune", "-older-than", "1h", "-h"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			stdout, stderr, code := runBin(t, env, args...)
			if code != exitOK || stderr != "" || !strings.Contains(stdout, "Usage: outbox-relay") && !strings.HasPrefix(stdout, "outbox-relay publishes") {
				t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
		})
	}
	stdout, _, _ := runBin(t, nil, "dead", "retry", "-h")
	for _, want := range []string{"Usage: outbox-relay dead retry [-all] [-exchange X] [-older-than D] [ID...]", "-all", "-older-than duration"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("dead retry -h lacks %q:\n%s", want, stdout)
		}
	}
	if stdout, _, _ := runBin(t, nil, "run", "-h"); !strings.Contains(stdout, "OUTBOX_AMQP_TLS_CA_FILE") {
		t.Errorf("run -h does not list the variables:\n%s", stdout)
	}
}

// A usage error is one line with one prefix, and exits 2.
func TestUsageErrorsHaveOnePrefix(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dead", "retry"}, "outbox-relay: dead retry needs row ids or -all\n"},
		{[]string{"dead", "purge", "-all"}, "outbox-relay: dead purge deletes rows for good: add -yes to confirm\n"},
		{[]string{"dead", "retry", "-bogus"}, "outbox-relay: flag provided but not defined: -bogus (outbox-relay dead retry -h lists the flags)\n"},
		{[]string{"dead", "retry", "seven"}, "outbox-relay: unexpected argument \"seven\" (outbox-relay dead retry -h for help)\n"},
		{[]string{"dead", "list", "-o", "yaml"}, "outbox-relay: -o \"yaml\": want table or json\n"},
		{[]string{"dead", "frob"}, "outbox-relay: unknown command dead \"frob\" (want list, retry or purge; outbox-relay dead -h for help)\n"},
		{[]string{"status", "extra"}, "outbox-relay: unexpected argument \"extra\" (outbox-relay status -h for help)\n"},
		{[]string{"run", "-x"}, "outbox-relay: flag provided but not defined: -x (outbox-relay run -h lists the flags)\n"},
	} {
		_, stderr, code := runBin(t, nil, tc.args...)
		if code != exitUsage || stderr != tc.want {
			t.Errorf("%v: exit %d, stderr\n got %q\nwant %q", tc.args, code, stderr, tc.want)
		}
	}
}

// Flags and ids come in any order.
func TestDeadFlagsAndIDsInAnyOrder(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	env := baseEnv(e)
	ids := insertDead(t, e, "gone", "gone", "gone", "gone")
	stdout, stderr, code := runBin(t, env, "dead", "purge", fmt.Sprint(ids[0]), "-yes", fmt.Sprint(ids[1]))
	if want := fmt.Sprintf("purged 2 dead row(s): %d, %d\n", ids[0], ids[1]); code != 0 || stdout != want {
		t.Errorf("dead purge ID -yes ID: exit %d, %q (want %q) %s", code, stdout, want, stderr)
	}
	stdout, stderr, code = runBin(t, env, "dead", "retry", fmt.Sprint(ids[2]), "-older-than", "0s", "--", fmt.Sprint(ids[3]))
	if want := fmt.Sprintf("retried 2 dead row(s): %d, %d; they are available now\n", ids[2], ids[3]); code != 0 || stdout != want {
		t.Errorf("dead retry ID -older-than 0s -- ID: exit %d, %q (want %q) %s", code, stdout, want, stderr)
	}
}

// insertDead inserts a dead row for each last error and returns their ids.
func insertDead(t *testing.T, e *testenv.Env, lastErrors ...string) []int64 {
	t.Helper()
	ids := make([]int64, len(lastErrors))
	for i, le := range lastErrors {
		err := e.Pool.QueryRow(context.Background(), `insert into `+e.Table.Ident()+` (routing_key, payload, attempts, last_error, dead_at)
			values ('k', 'x', 10, $1, now()) returning id`, le).Scan(&ids[i])
		if err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// `dead list` clips long text on a rune boundary, and a newline or tab in
// a last error does not break its table.
func TestDeadListClipsTextWhole(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	// 2-, 3- and 4-byte runes: the clip falls inside one of them.
	insertDead(t, e, "first line\nsecond\tline "+strings.Repeat("é€😀", 30))
	stdout, stderr, code := runBin(t, baseEnv(e), "dead", "list")
	if code != 0 {
		t.Fatalf("dead list: exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != 2 || !utf8.ValidString(stdout) {
		t.Fatalf("dead list: want a header and one row of valid UTF-8:\n%s", stdout)
	}
	if !strings.Contains(lines[1], "first line second line é€😀") || !strings.HasSuffix(lines[1], "…") {
		t.Errorf("dead list row: %q", lines[1])
	}
}

// `status` and `dead list` on a table that does not exist say so and how
// to create it; so does `run`, which waits for it.
func TestMissingTableSaysRunMigrate(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	env := baseEnv(e)
	want := fmt.Sprintf("outbox-relay: table %s does not exist: run `outbox-relay migrate` to create it (or set OUTBOX_TABLE)\n", e.Table)
	for _, args := range [][]string{{"status"}, {"status", "-o", "json"}, {"dead", "list"}, {"dead", "retry", "-all"}} {
		stdout, stderr, code := runBin(t, env, args...)
		if code != exitFailure || stderr != want || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr\n got %q\nwant %q", args, code, stdout, stderr, want)
		}
	}
	p := startRelay(t, env)
	testenv.WaitFor(t, 15*time.Second, "run to say `outbox-relay migrate`", func() bool {
		return strings.Contains(p.stderr.String(), "does not exist: run `outbox-relay migrate`")
	})
	if code := p.stop(t); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}

// Unknown OUTBOX_ variables are named in one warning, with the variable a
// typo was probably meant for; other prefixes are left alone.
func TestUnknownVariablesWarned(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"OUTBOX_TABLE":        "app.events",
		"OUTBOX_BATCHSIZE":    "5",
		"OUTBOX_POLL_INTERVL": "1s",
		"OUTBOX_COLOUR":       "red",
		"OTEL_SERVICE_NAME":   "relay",
	}
	stdout, stderr, code := runBin(t, env, "migrate", "-print")
	if code != 0 || !strings.Contains(stdout, "create table") {
		t.Fatalf("migrate -print: exit %d: %s", code, stderr)
	}
	want := "OUTBOX_BATCHSIZE (did you mean OUTBOX_BATCH_SIZE?), OUTBOX_COLOUR, OUTBOX_POLL_INTERVL (did you mean OUTBOX_POLL_INTERVAL?)"
	if strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "unknown variables ignored") || !strings.Contains(stderr, want) || strings.Contains(stderr, "OTEL") {
		t.Errorf("stderr = %q; want one warning naming %s", stderr, want)
	}
	if _, stderr, _ := runBin(t, map[string]string{"OUTBOX_TABLE": "app.events", "OUTBOX_INBOX_TABLE": "app.inbox"}, "migrate", "-print"); stderr != "" {
		t.Errorf("stderr with known variables only: %q", stderr)
	}
}

func TestClosestVariable(t *testing.T) {
	t.Parallel()
	names := []string{"OUTBOX_BATCH_SIZE", "OUTBOX_BATCH_BYTES", "OUTBOX_TABLE", "OUTBOX_LOG_LEVEL"}
	for _, tc := range []struct{ in, want string }{
		{"OUTBOX_BATCHSIZE", "OUTBOX_BATCH_SIZE"},
		{"OUTBOX_BATCH__SIZE", "OUTBOX_BATCH_SIZE"},
		{"OUTBOX_batch_size", "OUTBOX_BATCH_SIZE"},
		{"OUTBOX_BACTH_SIZE", "OUTBOX_BATCH_SIZE"},
		{"OUTBOX_TABLES", "OUTBOX_TABLE"},
		{"OUTBOX_LOGLEVEL", "OUTBOX_LOG_LEVEL"},
		{"OUTBOX_COLOUR", ""},
		{"OUTBOX_SIZE", ""},
	} {
		if got := closest(tc.in, names); got != tc.want {
			t.Errorf("closest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
