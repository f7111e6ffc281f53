package outbox_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

// A service changes its data and enqueues the event in one transaction.
func Example() {
	ctx := context.Background()
	pool, cleanup := exampleDB()
	defer cleanup()

	tx, err := pool.Begin(ctx)
	if err != nil {
		panic(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "insert into orders (id, state) values (42, 'paid')"); err != nil {
		panic(err)
	}
	ids, err := outbox.Enqueue(ctx, tx, outbox.Message{
		Exchange:     "orders",
		RoutingKey:   "order.paid",
		PartitionKey: "order-42",
		ContentType:  "application/json",
		Payload:      []byte(`{"id":42,"state":"paid"}`),
	})
	if err != nil {
		panic(err)
	}
	if err := tx.Commit(ctx); err != nil {
		panic(err)
	}
	fmt.Println("enqueued", len(ids), "message")
	printOutbox(pool, "outbox")
	// Output:
	// enqueued 1 message
	// orders order.paid order-42 {"id":42,"state":"paid"}
}

// A Writer names the table once; messages of one partition key keep the
// order of the batch.
func ExampleWriter_Enqueue() {
	ctx := context.Background()
	pool, cleanup := exampleDB("billing_outbox")
	defer cleanup()

	w, err := outbox.NewWriter("billing_outbox") // or "billing.outbox", `"Billing"."Outbox"`
	if err != nil {
		panic(err)
	}
	_, err = w.Enqueue(ctx, pool,
		outbox.Message{Exchange: "billing", RoutingKey: "invoice.created", PartitionKey: "invoice-7", Payload: []byte("1")},
		outbox.Message{Exchange: "billing", RoutingKey: "invoice.sent", PartitionKey: "invoice-7", Payload: []byte("2")},
		outbox.Message{Exchange: "billing", RoutingKey: "invoice.paid", PartitionKey: "invoice-7", Payload: []byte("3")},
	)
	if err != nil {
		panic(err)
	}
	printOutbox(pool, "billing_outbox")
	// Output:
	// billing invoice.created invoice-7 1
	// billing invoice.sent invoice-7 2
	// billing invoice.paid invoice-7 3
}

// With database/sql, use pgx's driver and EnqueueSQL. This message has its
// own id, headers, and is published in an hour at the earliest.
func ExampleEnqueueSQL() {
	ctx := context.Background()
	pool, cleanup := exampleDB()
	defer cleanup()
	db := stdlib.OpenDBFromPool(pool) // or sql.Open("pgx", url)
	defer func() { _ = db.Close() }()

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		panic(err)
	}
	defer func() { _ = tx.Rollback() }()
	id, _ := outbox.ParseMessageID("0b7e3a52-1c55-4e4b-9d1e-6a8f3c2b1a00")
	ids, err := outbox.EnqueueSQL(ctx, tx, outbox.Message{
		RoutingKey:  "reminders", // default exchange: routed to the queue "reminders"
		MessageID:   id,
		Headers:     map[string]any{"x-attempt": 1, "tenant": "acme"},
		Payload:     []byte("renew subscription 9"),
		AvailableAt: time.Now().Add(time.Hour),
	})
	if err != nil {
		panic(err)
	}
	if err := tx.Commit(); err != nil {
		panic(err)
	}
	var headers string
	var delayed bool
	err = db.QueryRowContext(ctx, "select headers::text, available_at > now() + interval '59 minutes' from outbox where message_id = $1",
		ids[0].String()).Scan(&headers, &delayed)
	if err != nil {
		panic(err)
	}
	fmt.Println(ids[0], headers, delayed)
	// Output:
	// 0b7e3a52-1c55-4e4b-9d1e-6a8f3c2b1a00 {"tenant": "acme", "x-attempt": 1} true
}

// A message that cannot be published as given is refused before anything
// is written, and the error names it.
func ExampleMessageError() {
	ctx := context.Background()
	pool, cleanup := exampleDB()
	defer cleanup()

	_, err := outbox.Enqueue(ctx, pool,
		outbox.Message{RoutingKey: "stats", Payload: []byte("ok")},
		outbox.Message{RoutingKey: "stats", Headers: map[string]any{"x-ratio": math.NaN()}},
	)
	var me *outbox.MessageError
	if errors.As(err, &me) {
		fmt.Println("refused message", me.Index, errors.Is(err, outbox.ErrInvalidHeader))
	}
	fmt.Println(err)
	printOutbox(pool, "outbox")
	// Output:
	// refused message 1 true
	// outbox: message 1: header "x-ratio": NaN cannot be carried
}

func ExampleParseMessageID() {
	id, err := outbox.ParseMessageID("0B7E3A52-1C55-4E4B-9D1E-6A8F3C2B1A00")
	if err != nil {
		panic(err)
	}
	fmt.Println(id)
	_, err = outbox.ParseMessageID("not-a-uuid")
	fmt.Println(err)
	// Output:
	// 0b7e3a52-1c55-4e4b-9d1e-6a8f3c2b1a00
	// outbox: parse message id "not-a-uuid": want xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
}

// exampleDB stands for a service's database: a pool on the test server
// (OUTBOX_TEST_DATABASE_URL) whose search_path is a fresh schema holding an
// orders table and migrated outbox tables, "outbox" plus the ones named.
// cleanup drops the schema and closes the pool.
func exampleDB(tables ...string) (pool *pgxpool.Pool, cleanup func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := "example_" + strings.ToLower(rand.Text()[:10])
	ident := pgx.Identifier{name}.Sanitize()

	conn, err := pgx.Connect(ctx, testenv.DatabaseURL())
	if err != nil {
		panic(fmt.Sprintf("PostgreSQL at OUTBOX_TEST_DATABASE_URL (default %s) does not answer: %v", testenv.DatabaseURLDefault, err))
	}
	defer func() { _ = conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, "create schema "+ident); err != nil {
		panic(err)
	}
	drop := func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "drop schema "+ident+" cascade") }
	if _, err := conn.Exec(ctx, "create table "+pgx.Identifier{name, "orders"}.Sanitize()+" (id int primary key, state text not null)"); err != nil {
		drop()
		panic(err)
	}
	for _, t := range append([]string{schema.TableDefault}, tables...) {
		if _, err := schema.Migrate(ctx, conn, schema.Table{Schema: name, Name: t}); err != nil {
			drop()
			panic(err)
		}
	}

	cfg, err := pgxpool.ParseConfig(testenv.DatabaseURL())
	if err != nil {
		drop()
		panic(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = name
	pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		drop()
		panic(err)
	}
	return pool, func() {
		_, _ = pool.Exec(context.Background(), "drop schema "+ident+" cascade")
		pool.Close()
	}
}

// printOutbox prints the rows of table in id order.
func printOutbox(pool *pgxpool.Pool, table string) {
	rows, err := pool.Query(context.Background(), "select exchange, routing_key, coalesce(partition_key, '-'), payload from "+
		pgx.Identifier{table}.Sanitize()+" order by id")
	if err != nil {
		panic(err)
	}
	var exchange, key, partition string
	var payload []byte
	_, err = pgx.ForEachRow(rows, []any{&exchange, &key, &partition, &payload}, func() error {
		fmt.Println(exchange, key, partition, string(payload))
		return nil
	})
	if err != nil {
		panic(err)
	}
}
