package inbox_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

// --- example: consume ---

// consume handles the deliveries of the billing service: each order.paid
// event creates one invoice and announces it, once, however often the
// event is delivered.
func consume(ctx context.Context, pool *pgxpool.Pool, deliveries <-chan amqp.Delivery) error {
	c, err := inbox.NewConsumer(pool, inbox.Config{Name: "billing"})
	if err != nil {
		return err
	}
	for d := range deliveries {
		outcome, err := c.Handle(ctx, d, func(ctx context.Context, tx pgx.Tx) error {
			// The work, in the transaction that claimed the message.
			if _, err := tx.Exec(ctx, "insert into invoices (order_id) values ($1)", string(d.Body)); err != nil {
				return err
			}
			// Consume then produce: the event commits with the work.
			_, err := outbox.Enqueue(ctx, tx, outbox.Message{
				Exchange: "billing", RoutingKey: "invoice.created", Payload: d.Body,
			})
			return err
		})
		fmt.Println(outcome) // processed, duplicate, requeued or dead-lettered
		if err != nil {
			fmt.Println("error:", err) // your logger here
		}
	}
	return nil
}

// --- end example ---

// The same event delivered twice creates one invoice and one outbox row.
func ExampleConsumer_Handle() {
	ctx := context.Background()
	pool, cleanup := exampleDB()
	defer cleanup()
	deliveries, stop := exampleDeliveries("order-42", "order-42")
	defer stop()

	if err := consume(ctx, pool, deliveries); err != nil {
		panic(err)
	}
	var invoices, events int
	if err := pool.QueryRow(ctx, "select (select count(*) from invoices), (select count(*) from outbox)").Scan(&invoices, &events); err != nil {
		panic(err)
	}
	fmt.Println(invoices, "invoice,", events, "event")
	// Output:
	// processed
	// duplicate
	// 1 invoice, 1 event
}

// exampleDB stands for the billing service's database: a pool whose
// search_path is a fresh schema holding an invoices table, an outbox and
// an inbox. cleanup drops the schema and closes the pool.
func exampleDB() (pool *pgxpool.Pool, cleanup func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := "example_" + strings.ToLower(rand.Text()[:10])
	conn, err := pgx.Connect(ctx, testenv.DatabaseURL())
	if err != nil {
		panic(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, "create schema "+pgx.Identifier{name}.Sanitize()); err != nil {
		panic(err)
	}
	drop := func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "drop schema "+pgx.Identifier{name}.Sanitize()+" cascade")
	}
	err = func() error {
		if _, err := conn.Exec(ctx, "create table "+pgx.Identifier{name, "invoices"}.Sanitize()+" (order_id text not null)"); err != nil {
			return err
		}
		if _, err := schema.Migrate(ctx, conn, schema.Table{Schema: name, Name: schema.TableDefault}); err != nil {
			return err
		}
		return inbox.Migrate(ctx, conn, schema.Table{Schema: name, Name: inbox.TableDefault})
	}()
	if err != nil {
		drop()
		panic(err)
	}
	cfg, err := pgxpool.ParseConfig(testenv.DatabaseURL())
	if err == nil {
		cfg.ConnConfig.RuntimeParams["search_path"] = name
		pool, err = pgxpool.NewWithConfig(ctx, cfg)
	}
	if err != nil {
		drop()
		panic(err)
	}
	return pool, func() {
		_, _ = pool.Exec(context.Background(), "drop schema "+pgx.Identifier{name}.Sanitize()+" cascade")
		pool.Close()
	}
}

// exampleDeliveries publishes one message per body, all with the same
// message_id, to a fresh auto-deleted queue, and returns a channel that
// yields exactly those deliveries and then closes. stop closes the
// connection.
func exampleDeliveries(bodies ...string) (<-chan amqp.Delivery, func()) {
	conn, err := amqp.Dial(testenv.AMQPURL())
	if err != nil {
		panic(err)
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	var q amqp.Queue
	if err == nil {
		q, err = ch.QueueDeclare("", false, true, true, false, nil)
	}
	if err != nil {
		_ = conn.Close()
		panic(err)
	}
	id := outbox.NewMessageID().String()
	for _, body := range bodies {
		c, err := ch.PublishWithDeferredConfirm("", q.Name, false, false, amqp.Publishing{MessageId: id, Body: []byte(body)})
		if err != nil || !c.Wait() {
			_ = conn.Close()
			panic(fmt.Sprint("publish: ", err))
		}
	}
	in, err := ch.Consume(q.Name, "", false, true, false, false, nil)
	if err != nil {
		_ = conn.Close()
		panic(err)
	}
	out := make(chan amqp.Delivery)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		for range bodies {
			out <- <-in
		}
	}()
	return out, func() { <-done; _ = conn.Close() }
}
