// Command outbox-demo shows the transactional outbox at work on a local
// PostgreSQL and RabbitMQ: it runs outbox-relay as a subprocess, plays a
// few fake services that write events in their own transactions and others
// that consume them, and prints one line per event, the outbox's lag every
// few seconds, and a summary that checks every committed event arrived and
// no rolled-back one did. It is the README's first command (`make demo`).
//
// Usage:
//
//	outbox-demo [-relay PATH] [-duration D] [-metrics-addr ADDR] [-table S.T] [-prefix P]
//	            [-burst-every D] [-burst N] [-pause-every D] [-pause-for D]
//	            [-poison-at D] [-poison-fix-after D] [-poison-retry-after D]
//
// # Operator episodes
//
// Two episodes show what an operator sees, with commands to try by hand:
//
//   - Relay pause (-pause-every, -pause-for): the demo stops the relay with
//     SIGTERM (it must exit 0), keeps producing while [lag] shows the
//     backlog rise, then starts it again and shows the backlog drain.
//   - Poison row (-poison-at): the jobs service sends one audit.job event to
//     the exchange <prefix>.audit, which does not exist yet. The relay
//     retries it and parks it dead; [ops] prints the `outbox-relay dead list`
//     command that shows it, then declares the exchange (-poison-fix-after)
//     and prints the `dead retry` command that sends it. If nobody runs it
//     within -poison-retry-after, the demo runs it itself.
//
// The audit event counts in the final check like any other committed event.
// If the demo stops mid-episode, it does not drop the event from the check:
// it declares the exchange and retries the row at once, says so, and waits
// for the event with the others. A relay stopped for a pause is started
// again at once for the same reason.
//
// It reads OUTBOX_DATABASE_URL, OUTBOX_AMQP_URL and OUTBOX_AMQP_PASSWORD_FILE
// with the relay's defaults, and hands them to the relay. It runs until
// SIGINT or SIGTERM (a second one skips the wait for in-flight events), or
// for -duration, and exits 0 only if the check passed and the relay exited
// cleanly.
//
// What it leaves behind, on purpose: the schema outbox_demo (the outbox and
// jobs tables; a rerun continues where the last run stopped; `drop schema
// outbox_demo cascade` removes it), the durable exchanges outbox_demo.jobs
// and outbox_demo.broadcast, and the durable queue outbox_demo.api, because a
// real consumer's queue outlives the consumer (events committed while it is
// down wait there). The web instances' queues are deleted with them, and so
// is the audit queue. The exchange outbox_demo.audit stays once the poison
// episode has declared it; the next run deletes it at start, so that the
// episode plays again.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/kelseyhightower/envconfig"

	"github.com/outbox-relay/outbox-relay/schema"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // an error, a lost or rolled-back event received, or an unclean relay exit
	exitUsage   = 2
)

// Flag defaults.
const (
	tableDefault       = "outbox_demo.outbox"
	prefixDefault      = "outbox_demo"
	metricsAddrDefault = "127.0.0.1:9464"
	burstEveryDefault  = 20 * time.Second
	burstSizeDefault   = 2000

	pauseEveryDefault       = 45 * time.Second
	pauseForDefault         = 8 * time.Second
	poisonAtDefault         = 15 * time.Second
	poisonFixAfterDefault   = 10 * time.Second
	poisonRetryAfterDefault = 20 * time.Second
)

// main runs the demo and exits with its code.
func main() {
	// The first signal stops production; the second cuts the wait for
	// in-flight events short. The relay runs in a process group of its own
	// (see relayProcAttr), so a Ctrl-C in the terminal reaches only us and
	// we stop the relay last, once the consumers have what it published.
	ctx, stop := context.WithCancel(context.Background())
	hurry, hurryNow := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for n := 0; ; n++ {
			select {
			case <-sigs:
				if n == 0 {
					stop()
				} else {
					hurryNow()
				}
			case <-done:
				return
			}
		}
	})
	code := run(ctx, hurry, os.Args[1:], os.Stdout, os.Stderr)
	signal.Stop(sigs)
	close(done)
	wg.Wait()
	stop()
	hurryNow()
	os.Exit(code)
}

// options are the demo's flags and environment.
type options struct {
	relayPath   string
	duration    time.Duration
	metricsAddr string
	table       schema.Table
	tableArg    string // -table as given, for the commands the demo prints
	prefix      string
	burstEvery  time.Duration
	burstSize   int
	env         env

	pauseEvery       time.Duration // stop the relay this often (0: never)
	pauseFor         time.Duration // for this long
	poisonAt         time.Duration // enqueue the poison row this long after production starts (0: never)
	poisonFixAfter   time.Duration // declare its exchange this long after it is dead
	poisonRetryAfter time.Duration // retry it this long after the fix, unless someone did
}

// env holds the relay's variables the demo uses too, with the relay's
// defaults. The URLs may hold passwords: they are never printed.
type env struct {
	DatabaseURL      string `envconfig:"DATABASE_URL" default:"postgres://postgres@localhost:5432/postgres"`
	AMQPURL          string `envconfig:"AMQP_URL" default:"amqp://guest:guest@localhost:5672/"`
	AMQPPasswordFile string `envconfig:"AMQP_PASSWORD_FILE"`
}

// names are the demo's objects, all derived from -table and -prefix so
// that a test can run the demo beside a real one.
type names struct {
	table     schema.Table // the outbox table
	jobsTable string       // quoted name of the jobs service's own table
	jobs      string       // topic exchange of job events
	broadcast string       // fanout exchange every web instance listens on
	apiQueue  string       // the api service's durable queue
	audit     string       // fanout exchange of the poison episode, missing until its fix
}

// names derives the demo's object names from the options.
func (o *options) names() names {
	return names{
		table:     o.table,
		jobsTable: pgx.Identifier{o.table.Schema, "jobs"}.Sanitize(),
		jobs:      o.prefix + ".jobs",
		broadcast: o.prefix + ".broadcast",
		apiQueue:  o.prefix + ".api",
		audit:     o.prefix + ".audit",
	}
}

// parseOptions parses the flags and reads the environment. It returns
// flag.ErrHelp after printing the usage for -h.
func parseOptions(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("outbox-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var table string
	fs.StringVar(&o.relayPath, "relay", "", "outbox-relay binary (default: outbox-relay next to this program, else in PATH)")
	fs.DurationVar(&o.duration, "duration", 0, "stop producing after this long (0: run until Ctrl-C)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", metricsAddrDefault, "the relay's OUTBOX_METRICS_ADDR, scraped for [lag] (empty: no metrics)")
	fs.StringVar(&table, "table", tableDefault, "outbox table, schema-qualified; the jobs table goes in the same schema, which should be the demo's own")
	fs.StringVar(&o.prefix, "prefix", prefixDefault, "prefix of the exchange and queue names")
	fs.DurationVar(&o.burstEvery, "burst-every", burstEveryDefault, "commit a burst of -burst events this often, the first after half of it (0: never)")
	fs.IntVar(&o.burstSize, "burst", burstSizeDefault, "events per burst, all in one transaction")
	fs.DurationVar(&o.pauseEvery, "pause-every", pauseEveryDefault, "stop the relay this often, the first time after two thirds of it, and start it again (0: never)")
	fs.DurationVar(&o.pauseFor, "pause-for", pauseForDefault, "how long the relay stays stopped; less than -pause-every")
	fs.DurationVar(&o.poisonAt, "poison-at", poisonAtDefault, "enqueue one event to the missing exchange <prefix>.audit this long after the services start (0: never)")
	fs.DurationVar(&o.poisonFixAfter, "poison-fix-after", poisonFixAfterDefault, "declare <prefix>.audit this long after its row is parked dead")
	fs.DurationVar(&o.poisonRetryAfter, "poison-retry-after", poisonRetryAfterDefault, "retry the dead row this long after the fix, unless someone did")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `outbox-demo runs outbox-relay against a local PostgreSQL and RabbitMQ and shows
events flowing from fake services' transactions to fake consumers.

It uses OUTBOX_DATABASE_URL, OUTBOX_AMQP_URL and OUTBOX_AMQP_PASSWORD_FILE,
with the relay's defaults. Ctrl-C stops it.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	t, err := schema.ParseTable(table)
	switch {
	case err != nil:
		return nil, fmt.Errorf("-table: %w", err)
	case t.Schema == "" || t.Schema == "public":
		return nil, fmt.Errorf("-table %s: name a schema of the demo's own (it creates a jobs table there)", table)
	case o.prefix == "" || strings.ContainsAny(o.prefix, " \t\n"):
		return nil, errors.New("-prefix: want a non-empty name without spaces")
	case o.duration < 0 || o.burstEvery < 0 || o.pauseEvery < 0 || o.poisonAt < 0 || o.poisonFixAfter < 0 || o.poisonRetryAfter < 0:
		return nil, errors.New("-duration, -burst-every, -pause-every and the -poison durations must not be negative")
	case o.burstSize < 1 || o.burstSize > 100_000:
		return nil, errors.New("-burst: want 1 to 100000 events")
	case o.pauseEvery > 0 && (o.pauseFor <= 0 || o.pauseFor >= o.pauseEvery):
		return nil, errors.New("-pause-for: want more than 0 and less than -pause-every")
	}
	o.table, o.tableArg = t, table
	if err := envconfig.Process("OUTBOX", &o.env); err != nil {
		return nil, fmt.Errorf("read environment: %w", err)
	}
	return &o, nil
}

// run runs the demo with args (without the program name) and returns the
// exit code. ctx ends production; hurry ends the wait for in-flight events.
func run(ctx, hurry context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "outbox-demo: %v\n", err)
		return exitUsage
	}
	out := newPrinter(stdout)
	d := &demo{opts: o, names: o.names(), out: out, ledger: newLedger()}
	err = d.run(ctx, hurry)
	if err != nil {
		out.printf("demo", "error: %v", err)
	}
	if ok := d.summary(); !ok || err != nil {
		return exitFailure
	}
	return exitOK
}
