// Command outbox-relay publishes the rows of a transactional outbox table to
// RabbitMQ with publisher confirms, and deletes each row once the broker has
// confirmed it.
//
// Usage:
//
//	outbox-relay [run]            relay rows until SIGTERM or SIGINT
//	outbox-relay migrate [-print] create or upgrade the outbox table
//	outbox-relay status [-o json] pending and dead rows, lag, leader
//	outbox-relay dead list|retry|purge   inspect and repair dead rows
//	outbox-relay inbox migrate|prune     a consumer's inbox: create it, prune old claims
//	outbox-relay version          print the version
//
// Configuration comes from OUTBOX_* environment variables; `outbox-relay -h`
// lists them with their defaults.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/lmittmann/tint"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	// A sidecar should stay small and steady. The relay's live heap is a few
	// batches of rows (about 2 MiB); with the default GOGC=100 the heap grows
	// to twice that under load, and the resident size of a relay draining a
	// backlog ended 27% above one that had little to do. Half the headroom
	// keeps it within about 13%, for about one percent more CPU spent in the
	// collector. GOGC, when set, still decides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	// The relay's work is one loop (claim, publish, settle) and one
	// goroutine reading the broker's confirms: more than one P buys it
	// little, and costs the idle threads' spinning and hand-offs at every
	// wake-up. On 2 cores shared with PostgreSQL and RabbitMQ, with one P,
	// three relays sharing a table at 1,000 rows/s spent 20% less CPU in
	// their processes, and a relay drained 200,000 rows 1.03-1.30 times as
	// fast (five paired runs), using a third of its core at 15,000 rows/s.
	// GOMAXPROCS, when set, still decides: set it to 2 for a relay that
	// should drain above about 40,000 rows/s.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	// In a container with a memory limit, let the collector work harder as
	// the heap nears it rather than the kernel kill the relay: a soft Go
	// memory limit of 80% of the container's, leaving room for what the Go
	// runtime does not count. GOMEMLIMIT, when set, still decides.
	if os.Getenv("GOMEMLIMIT") == "" {
		if limit, ok := cgroupMemoryLimit(cgroupMemoryFiles...); ok {
			debug.SetMemoryLimit(limit / 5 * 4)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cgroupMemoryFiles hold the memory limit of the process's cgroup: cgroup
// v2, then v1.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// cgroupMemoryLimit returns the memory limit in bytes read from the first
// of files that exists, if that file sets one.
func cgroupMemoryLimit(files ...string) (int64, bool) {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil {
			return parseMemoryLimit(string(b))
		}
	}
	return 0, false
}

// parseMemoryLimit parses a cgroup memory limit: a number of bytes, where
// cgroup v2 writes "max" for none and cgroup v1 a number near 2^63.
func parseMemoryLimit(s string) (int64, bool) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 || n >= 1<<50 {
		return 0, false
	}
	return n, true
}

// run runs one command with args (without the program name), writing command
// output to stdout and logs and errors to stderr, and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && isHelp(args[0]) {
		usage(stdout)
		return exitOK
	}
	cmd := "run"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	if cmd == "version" {
		fmt.Fprintln(stdout, versionString())
		return exitOK
	}
	commands := map[string]subcommand{
		"run":     parseRun,
		"migrate": cmdMigrate,
		"status":  cmdStatus,
		"dead":    cmdDead,
		"inbox":   cmdInbox,
	}
	parse, ok := commands[cmd]
	if !ok {
		fmt.Fprintf(stderr, "outbox-relay: unknown command %q (want run, migrate, status, dead, inbox or version; -h for help)\n", cmd)
		return exitUsage
	}
	act, err := parse(args)
	var help *helpRequest
	switch {
	case errors.As(err, &help):
		fmt.Fprint(stdout, help.text)
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "outbox-relay: %v\n", err)
		return exitUsage
	}
	cfg, err := loadConfig()
	if err != nil {
		fmt.Fprintf(stderr, "outbox-relay: %v\n", err)
		return exitUsage
	}
	e := &env{cfg: cfg, stdout: stdout, stderr: stderr, log: newLogger(stderr, cfg)}
	if unknown := unknownVariables(os.Environ()); unknown != "" {
		e.log.Warn("unknown variables ignored", slog.String("variables", unknown))
	}
	if err := act(ctx, e); err != nil {
		if cmd == "run" {
			// The daemon's output is its log, JSON included.
			e.log.Error("relay failed", tint.Err(err))
		} else {
			fmt.Fprintf(stderr, "outbox-relay: %v\n", err)
		}
		return exitFailure
	}
	return exitOK
}

// env is what a command gets: its configuration and where to write.
type env struct {
	cfg    *config
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
}

func newLogger(w io.Writer, cfg *config) *slog.Logger {
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: cfg.logLevel}))
	}
	return slog.New(tint.NewTextHandler(w, &tint.Options{Level: cfg.logLevel, NoColor: !isTerminal(w)}))
}

// isTerminal reports whether w is a character device, such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// usageTemplate is envconfig's usage table without the type column, its
// defaults read from defaultConfig rather than from tags.
var usageTemplate = template.Must(template.New("usage").Funcs(template.FuncMap{
	"default": showDefault,
}).Parse("VARIABLE\tDEFAULT\tMEANING\n{{range .}}{{.Key}}\t{{default .Field}}\t{{.Tags.Get \"desc\"}}\n{{end}}"))

// showDefault formats a field of defaultConfig as a user would set it:
// durations as 5m, not 5m0s, and URLs in full (the defaults hold no
// secret).
func showDefault(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case secretURL:
		return x.reveal()
	case time.Duration:
		return shortDuration(x)
	case int:
		if x == 0 {
			return "" // unset: OUTBOX_PARTITIONS follows the table
		}
	case []string:
		return strings.Join(x, ",") // as the variable lists them
	}
	return fmt.Sprint(v.Interface())
}

// shortDuration formats d as a user would write it: 5m, not 5m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func usage(w io.Writer) {
	fmt.Fprint(w, `outbox-relay publishes the rows of a transactional outbox table to RabbitMQ.

Usage:
  outbox-relay [run]              relay rows until SIGTERM or SIGINT
  outbox-relay migrate [-print]   create or upgrade the outbox table (-print: show the SQL)
  outbox-relay status [-o json]   pending and dead rows, lag and leader, from the database
  outbox-relay dead list [-exchange X] [-older-than D] [-limit N] [-o json]
  outbox-relay dead retry [-all] [-exchange X] [-older-than D] [ID...]
                                  make dead rows available again (attempts reset) and wake the relay
  outbox-relay dead purge -yes [-all] [-exchange X] [-older-than D] [ID...]
                                  delete dead rows for good
  outbox-relay inbox migrate [-print]
                                  create a consumer's inbox table and claim function (OUTBOX_INBOX_TABLE)
  outbox-relay inbox prune -older-than D [-batch N]
                                  delete inbox claims older than D, in batches
  outbox-relay version            print the version

Each command's -h tells more. Flags and ids may come in any order.

`)
	envTable(w)
}

// envTable writes the variables, their defaults and meanings.
func envTable(w io.Writer) {
	fmt.Fprint(w, "Environment (a bad value exits 2, naming the variable; unknown OUTBOX_ variables are warned of):\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	d := defaultConfig()
	_ = envconfig.Usaget(envPrefix, &d, tw, usageTemplate)
	_ = tw.Flush()
}
