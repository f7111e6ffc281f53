package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"

	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

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
	// tracer, when set, is the relays' tracer provider (the tracing
	// scenario); traced makes fill write a traceparent into every row.
	tracer trace.TracerProvider
	traced bool
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
	// As `outbox-relay migrate` leaves a table it creates.
	if _, err := schema.SetPartitions(ctx, b.db, b.table, cmp.Or(o.partitions, schema.DefaultPartitions), 10*time.Second); err != nil {
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

// amqpPort is the port of the bench's broker URL.
func (b *bench) amqpPort() string {
	u, err := amqp.ParseURI(b.o.amqpURL)
	if err != nil {
		return ""
	}
	return strconv.Itoa(u.Port)
}

// pool opens a pool of up to n connections on the bench database.
func (b *bench) pool(ctx context.Context, n int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(b.dbURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(n)
	return pgxpool.NewWithConfig(ctx, cfg)
}

// startRelay runs a relay on the bench table until the returned stop.
func (b *bench) startRelay(ctx context.Context) (stop func() error, err error) {
	stop, _, err = b.startRelayCounting(ctx)
	return stop, err
}

// startRelayCounting is startRelay that also returns how many rows the
// relay has published and deleted so far (outbox_published_total).
func (b *bench) startRelayCounting(ctx context.Context) (stop func() error, published func() float64, err error) {
	reg := prometheus.NewRegistry()
	cfg := relay.Config{BatchSize: b.o.batch, VacuumEvery: relay.VacuumEveryDefault, Registerer: reg}
	cfg.DatabaseURL, cfg.AMQPURL, cfg.Table, cfg.Logger = b.dbURL, b.o.amqpURL, b.table, b.log
	cfg.TracerProvider = b.tracer
	r, err := relay.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	published = func() float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "outbox_published_total" && len(mf.GetMetric()) == 1 {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return 0
	}
	return func() error { cancel(); return <-done }, published, nil
}

// consumer consumes the bench queue with auto-ack and counts deliveries.
type consumer struct {
	n      atomic.Int64
	signal chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// consume starts a consumer that calls each (if set) with every delivery.
// Stop it with close.
func (b *bench) consume(ctx context.Context, each func(amqp.Delivery)) (*consumer, error) {
	ch, err := b.amqp.Channel()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	d, err := ch.ConsumeWithContext(ctx, b.queue, "", true, false, false, false, nil)
	if err != nil {
		cancel()
		_ = ch.Close()
		return nil, fmt.Errorf("consume: %w", err)
	}
	c := &consumer{signal: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer ch.Close()
		for m := range d {
			if each != nil {
				each(m)
			}
			c.n.Add(1)
			select {
			case c.signal <- struct{}{}:
			default:
			}
		}
	}()
	return c, nil
}

// close stops the consumer and waits for it.
func (c *consumer) close() {
	c.cancel()
	<-c.done
}

// waitFor waits until the consumer has seen n messages in all.
func (c *consumer) waitFor(ctx context.Context, n int64, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for c.n.Load() < n {
		select {
		case <-c.signal:
		case <-t.C:
			return fmt.Errorf("received %d of %d messages within %s", c.n.Load(), n, timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// confirmChannel opens a channel in confirm mode on the bench's
// connection; the caller closes it.
func (b *bench) confirmChannel() (*amqp.Channel, error) { return confirmChannel(b.amqp) }

// confirmChannel opens a channel in confirm mode on conn; the caller
// closes it.
func confirmChannel(conn *amqp.Connection) (*amqp.Channel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, err
	}
	return ch, nil
}

// rawPublish publishes n messages to the queue with confirms, keeping up to
// window unconfirmed: the broker's limit the relay is compared with.
func (b *bench) rawPublish(ctx context.Context, n, window int) error {
	ch, err := b.confirmChannel()
	if err != nil {
		return err
	}
	defer ch.Close()
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
	if b.traced {
		return b.fillTraced(ctx, n)
	}
	return b.copyBacklog(ctx, b.db, b.table, n, 0)
}

// copier is what COPY needs: a connection or a transaction.
type copier interface {
	CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rows pgx.CopyFromSource) (int64, error)
}

// copyBacklog inserts n rows into table t through q with COPY, routed to
// the bench queue. With keys > 0 the rows' partition_keys cycle through
// that many distinct keys, evenly; with 0 they have none.
func (b *bench) copyBacklog(ctx context.Context, q copier, t schema.Table, n, keys int) error {
	rows := make([][]any, 0, 10_000)
	for done := 0; done < n; {
		rows = rows[:0]
		for ; len(rows) < cap(rows) && done < n; done++ {
			var key any
			if keys > 0 {
				key = fmt.Sprintf("key-%d", done%keys)
			}
			rows = append(rows, []any{"", b.queue, key, b.payload})
		}
		if _, err := q.CopyFrom(ctx, pgx.Identifier{t.Schema, t.Name}, []string{"exchange", "routing_key", "partition_key", "payload"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("fill backlog: %w", err)
		}
	}
	return nil
}
