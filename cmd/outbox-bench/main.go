// Command outbox-bench measures the relay against the local servers and
// prints each figure next to the limit measured in the same run, as a ratio:
// absolute numbers on a shared machine mean little, ratios measured side by
// side do.
//
// It creates its own database, queue and table, and drops them at the end.
//
//	outbox-bench [-rows 100000] [-events 100] [-payload 256]
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the benchmark's sizes and servers.
type options struct {
	adminURL string // a database the bench can CREATE DATABASE from
	amqpURL  string
	rows     int
	events   int
	interval time.Duration
	payload  int
	verbose  bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("outbox-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.adminURL, "database-url", envOr("OUTBOX_DATABASE_URL", "postgres://postgres@localhost:5432/postgres"), "PostgreSQL URL of a database to create the bench database from")
	fs.StringVar(&o.amqpURL, "amqp-url", envOr("OUTBOX_AMQP_URL", "amqp://guest:guest@localhost:5672/"), "RabbitMQ URL")
	fs.IntVar(&o.rows, "rows", 100_000, "backlog rows for the drain scenario")
	fs.IntVar(&o.events, "events", 100, "single events for the idle-latency scenario")
	fs.DurationVar(&o.interval, "interval", 200*time.Millisecond, "time between idle-latency events")
	fs.IntVar(&o.payload, "payload", 256, "payload bytes")
	fs.BoolVar(&o.verbose, "v", false, "show the relay's logs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	b, err := newBench(ctx, o, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "outbox-bench: %v\n", err)
		return 1
	}
	defer b.close()
	var rep report
	for _, s := range []func(context.Context, *report) error{b.drain, b.idleLatency} {
		if err := s(ctx, &rep); err != nil {
			fmt.Fprintf(stderr, "outbox-bench: %v\n", err)
			return 1
		}
	}
	rep.print(stdout)
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// bench is one run's private database, table, queue and connections.
type bench struct {
	o       options
	log     *slog.Logger
	admin   *pgx.Conn
	dbName  string
	dbURL   string
	db      *pgx.Conn
	table   schema.Table
	amqp    *amqp.Connection
	queue   string
	payload []byte
}

func newBench(ctx context.Context, o options, stderr io.Writer) (*bench, error) {
	b := &bench{o: o, log: slog.New(slog.DiscardHandler), table: schema.Table{Schema: "public", Name: "outbox"}}
	if o.verbose {
		b.log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	b.dbName = "outbox_bench_" + hex.EncodeToString(suffix)
	b.queue = "outbox-bench-" + hex.EncodeToString(suffix)
	b.payload = make([]byte, o.payload)
	_, _ = rand.Read(b.payload)

	var err error
	if b.admin, err = pgx.Connect(ctx, o.adminURL); err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	if _, err := b.admin.Exec(ctx, "create database "+pgx.Identifier{b.dbName}.Sanitize()); err != nil {
		b.close()
		return nil, fmt.Errorf("create bench database: %w", err)
	}
	cfg := b.admin.Config().Copy()
	cfg.Database = b.dbName
	b.dbURL = fmt.Sprintf("host=%s port=%d user=%s dbname=%s", cfg.Host, cfg.Port, cfg.User, b.dbName)
	if cfg.Password != "" {
		b.dbURL += " password=" + cfg.Password
	}
	if b.db, err = pgx.ConnectConfig(ctx, cfg); err != nil {
		b.close()
		return nil, fmt.Errorf("connect to bench database: %w", err)
	}
	if _, err := schema.Migrate(ctx, b.db, b.table); err != nil {
		b.close()
		return nil, err
	}
	if b.amqp, err = amqp.Dial(o.amqpURL); err != nil {
		b.close()
		return nil, fmt.Errorf("connect to broker: %w", err)
	}
	ch, err := b.amqp.Channel()
	if err != nil {
		b.close()
		return nil, err
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(b.queue, true, false, false, false, nil); err != nil {
		b.close()
		return nil, fmt.Errorf("declare queue: %w", err)
	}
	return b, nil
}

func (b *bench) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if b.amqp != nil {
		if ch, err := b.amqp.Channel(); err == nil {
			_, _ = ch.QueueDelete(b.queue, false, false, false)
		}
		_ = b.amqp.Close()
	}
	if b.db != nil {
		_ = b.db.Close(ctx)
	}
	if b.admin != nil {
		_, _ = b.admin.Exec(ctx, "drop database if exists "+pgx.Identifier{b.dbName}.Sanitize()+" with (force)")
		_ = b.admin.Close(ctx)
	}
}

// startRelay runs a relay on the bench table until the returned stop.
func (b *bench) startRelay(ctx context.Context, cfg relay.Config) (stop func() error, err error) {
	cfg.DatabaseURL, cfg.AMQPURL, cfg.Table, cfg.Logger = b.dbURL, b.o.amqpURL, b.table, b.log
	r, err := relay.New(cfg)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	return func() error { cancel(); return <-done }, nil
}

// consume counts deliveries on the bench queue and calls each (if set) with
// every one, until ctx is done.
func (b *bench) consume(ctx context.Context, each func(amqp.Delivery)) (<-chan int, error) {
	ch, err := b.amqp.Channel()
	if err != nil {
		return nil, err
	}
	d, err := ch.ConsumeWithContext(ctx, b.queue, "", true, false, false, false, nil)
	if err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}
	counts := make(chan int, 1024)
	go func() {
		defer ch.Close()
		n := 0
		for m := range d {
			n++
			if each != nil {
				each(m)
			}
			counts <- n
		}
	}()
	return counts, nil
}

// waitCount waits until the consumer has seen n messages.
func waitCount(ctx context.Context, counts <-chan int, n int, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case c := <-counts:
			if c >= n {
				return nil
			}
		case <-t.C:
			return fmt.Errorf("timed out waiting for %d messages", n)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// rawPublish publishes n messages to the queue with confirms, keeping up to
// window unconfirmed: the broker's limit the relay is compared with.
func (b *bench) rawPublish(ctx context.Context, n, window int) error {
	ch, err := b.amqp.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return err
	}
	pending := make([]*amqp.DeferredConfirmation, 0, window)
	for i := 0; i < n; i++ {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", b.queue, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, MessageId: fmt.Sprint(i), Timestamp: time.Now(), Body: b.payload})
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		pending = append(pending, dc)
		if len(pending) == window {
			for _, p := range pending[:window/2] {
				if ok, err := p.WaitContext(ctx); err != nil || !ok {
					return errors.Join(errors.New("raw publish nacked"), err)
				}
			}
			pending = append(pending[:0], pending[window/2:]...)
		}
	}
	for _, p := range pending {
		if ok, err := p.WaitContext(ctx); err != nil || !ok {
			return errors.Join(errors.New("raw publish nacked"), err)
		}
	}
	return nil
}

// fill inserts n rows with COPY.
func (b *bench) fill(ctx context.Context, n int) error {
	rows := make([][]any, 0, 10_000)
	for done := 0; done < n; {
		rows = rows[:0]
		for ; len(rows) < cap(rows) && done < n; done++ {
			rows = append(rows, []any{"", b.queue, b.payload})
		}
		if _, err := b.db.CopyFrom(ctx, pgx.Identifier{b.table.Schema, b.table.Name}, []string{"exchange", "routing_key", "payload"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("fill backlog: %w", err)
		}
	}
	return nil
}

// drain compares draining a backlog of rows with raw publishing of as many
// messages, each timed from start until the consumer has them all.
func (b *bench) drain(ctx context.Context, rep *report) error {
	n := b.o.rows
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	counts, err := b.consume(cctx, nil)
	if err != nil {
		return err
	}

	begin := time.Now()
	if err := b.rawPublish(ctx, n, 1000); err != nil {
		return err
	}
	if err := waitCount(ctx, counts, n, 5*time.Minute); err != nil {
		return fmt.Errorf("raw: %w", err)
	}
	raw := float64(n) / time.Since(begin).Seconds()

	if err := b.fill(ctx, n); err != nil {
		return err
	}
	if _, err := b.db.Exec(ctx, "vacuum analyze "+b.table.Ident()); err != nil {
		return err
	}
	begin = time.Now()
	stop, err := b.startRelay(ctx, relay.Config{})
	if err != nil {
		return err
	}
	err = waitCount(ctx, counts, 2*n, 5*time.Minute)
	took := time.Since(begin)
	if serr := stop(); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	rate := float64(n) / took.Seconds()
	rep.add("raw publish with confirms", fmt.Sprintf("%.0f msg/s", raw), "", "")
	rep.add(fmt.Sprintf("drain %d-row backlog", n), fmt.Sprintf("%.0f rows/s", rate), fmt.Sprintf("%.0f msg/s raw", raw), fmt.Sprintf("%.2f", rate/raw))
	return nil
}

// idleLatency writes single events into an idle relay and times commit →
// consumer receipt.
func (b *bench) idleLatency(ctx context.Context, rep *report) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	received := make(chan time.Time, b.o.events)
	if _, err := b.consume(cctx, func(amqp.Delivery) { received <- time.Now() }); err != nil {
		return err
	}
	stop, err := b.startRelay(ctx, relay.Config{})
	if err != nil {
		return err
	}
	defer stop()
	// Let the relay settle into waiting.
	time.Sleep(time.Second)
	lat := make([]time.Duration, 0, b.o.events)
	for i := 0; i < b.o.events; i++ {
		if _, err := b.db.Exec(ctx, "insert into "+b.table.Ident()+" (routing_key, payload) values ($1, $2)", b.queue, b.payload); err != nil {
			return err
		}
		committed := time.Now()
		select {
		case at := <-received:
			lat = append(lat, at.Sub(committed))
		case <-time.After(10 * time.Second):
			return fmt.Errorf("idle event %d not received", i)
		}
		time.Sleep(b.o.interval)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	rep.add(fmt.Sprintf("idle latency, %d events %s apart", b.o.events, b.o.interval),
		fmt.Sprintf("p50 %s  p99 %s  max %s", ms(q(0.5)), ms(q(0.99)), ms(lat[len(lat)-1])), "", "")
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

// report is the table the bench prints.
type report struct{ rows [][4]string }

func (r *report) add(figure, value, reference, ratio string) {
	r.rows = append(r.rows, [4]string{figure, value, reference, ratio})
}

func (r *report) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tVALUE\tREFERENCE (same run)\tRATIO")
	for _, row := range r.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", row[0], row[1], row[2], row[3])
	}
	_ = tw.Flush()
}
