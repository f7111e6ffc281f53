// Command outbox-demo is the README's first command (`make demo`): in a
// few seconds of output that reads top to bottom, it shows the
// transactional outbox at work on a local PostgreSQL and RabbitMQ, with
// the real outbox-relay binary as a subprocess. Its four steps are in
// story.go (the fourth, a consumer that produces through its inbox, in
// reports.go); it ends with a check (ledger.go), and exits 1 if that fails,
// 2 on a usage error.
//
// It reads OUTBOX_DATABASE_URL, OUTBOX_AMQP_URL and OUTBOX_AMQP_PASSWORD_FILE
// with the relay's defaults, and the relay inherits them. It leaves its
// schemas (the outbox's and <its name>_reports), exchanges and durable
// queue behind, and clears at start what an earlier run left in them.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// main runs the demo and exits with its code. A first Ctrl-C cuts the
// story short (the check still runs); a second one kills the demo.
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// newDemo reads the flags and the environment, and finds the relay binary.
func newDemo(args []string, stdout, stderr io.Writer) (*demo, error) {
	fs := flag.NewFlagSet("outbox-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	d := &demo{out: &syncWriter{w: stdout}, ledger: newLedger(), dbURL: cmp.Or(os.Getenv("OUTBOX_DATABASE_URL"), relay.DatabaseURLDefault)}
	table := fs.String("table", "outbox_demo.outbox", "outbox table, in a schema of the demo's own (it creates a jobs table there)")
	relayPath := fs.String("relay", "", "outbox-relay binary (default: next to this program, else in PATH)")
	prefix := fs.String("prefix", "outbox_demo", "prefix of the exchange and queue names")
	fs.StringVar(&d.metricsAddr, "metrics-addr", "127.0.0.1:9464", "the relay's OUTBOX_METRICS_ADDR, read for its lag")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var err error
	d.table, err = schema.ParseTable(*table)
	switch {
	case err != nil:
		return nil, fmt.Errorf("-table: %w", err)
	case d.table.Schema == "" || d.table.Schema == "public":
		return nil, fmt.Errorf("-table %s: name a schema of the demo's own", *table)
	case *prefix == "" || d.metricsAddr == "":
		return nil, errors.New("-prefix and -metrics-addr must not be empty")
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	d.jobsTable = pgx.Identifier{d.table.Schema, "jobs"}.Sanitize()
	d.reportsInbox = schema.Table{Schema: d.table.Schema + "_reports", Name: inbox.TableDefault}
	d.reportsTable = pgx.Identifier{d.reportsInbox.Schema, "reports"}.Sanitize()
	d.apiQueue, d.jobsExchange, d.auditExchange = *prefix+".api", *prefix+".jobs", *prefix+".audit"
	return d, d.newRelay(*relayPath)
}

// run runs the demo with args (without the program name) and returns its
// exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	d, err := newDemo(args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "outbox-demo: %v\n", err)
		return 2
	}
	if err = d.run(ctx); err != nil {
		d.say("demo", "stopped early: %v", err)
	}
	if !d.check() || err != nil {
		return 1
	}
	return 0
}

// syncWriter serialises the writes of the demo's goroutines and of the
// relay's output copier, each of which writes whole lines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

// say prints one narration line, prefixed with who speaks. A write error
// is ignored: there is nowhere left to report it.
func (d *demo) say(who, format string, args ...any) {
	_, _ = fmt.Fprintf(d.out, "%-8s %s\n", "["+who+"]", fmt.Sprintf(format, args...))
}
