// Package outbox is the producer side of the transactional outbox: a
// service inserts the messages it wants published into the outbox table in
// the same PostgreSQL transaction as the change they announce, and the
// outbox-relay daemon publishes them to RabbitMQ once that transaction has
// committed. Either both the change and its messages commit, or neither
// does.
//
// The package only writes rows; it does not talk to RabbitMQ.
//
//	tx, err := pool.Begin(ctx)
//	if err != nil {
//		return err
//	}
//	defer tx.Rollback(ctx)
//	if _, err := tx.Exec(ctx, "update orders set state = 'paid' where id = $1", id); err != nil {
//		return err
//	}
//	if _, err := outbox.Enqueue(ctx, tx, outbox.Message{
//		Exchange:     "orders",
//		RoutingKey:   "order.paid",
//		PartitionKey: "order-" + strconv.Itoa(id),
//		ContentType:  "application/json",
//		Payload:      body,
//	}); err != nil {
//		return err
//	}
//	return tx.Commit(ctx)
//
// # Handles
//
// Enqueue takes a pgx.Tx, *pgx.Conn or *pgxpool.Pool; EnqueueSQL takes a
// *sql.Tx, *sql.DB or *sql.Conn opened with pgx's database/sql driver
// (github.com/jackc/pgx/v5/stdlib). Pass the transaction that changes your
// data: through a pool or a connection outside a transaction, the messages
// commit on their own. Any query mode works, including the simple protocol
// used through transaction-mode poolers such as PgBouncer.
//
// # Batches
//
// All the messages of one call go into the table in a single INSERT, one
// round trip whatever their number, and the call returns their message ids
// in the order given. Every message is checked before anything is sent: if
// one is refused, Enqueue returns a *MessageError naming it (its Index and a
// reason matching ErrEmptyRoutingKey, ErrInvalidField or ErrInvalidHeader)
// and writes nothing.
//
// # Order
//
// Rows get their ids in the order of the batch, and calls made one after
// another in a transaction get increasing ids. The relay publishes the rows
// of one PartitionKey in id order, so messages about one aggregate arrive in
// the order they were enqueued, provided they are enqueued by transactions
// that do not run concurrently (ids are handed out at insert, not at
// commit). Messages without a PartitionKey have no order.
//
// # Headers
//
// Headers are stored as a jsonb object and turned back into an AMQP table
// by the relay: strings stay strings, integral numbers become int64, other
// numbers float64, booleans booleans, objects nested tables and arrays
// arrays; a nil value is left out (kept as a void inside arrays). Values
// are encoded with encoding/json, so anything it can encode is accepted,
// with what that implies: []byte arrives as a base64 string, time.Time as
// an RFC 3339 string, and a whole float such as 3.0 as int64 3.
//
// A value that would not arrive as given is refused (ErrInvalidHeader):
//
//   - NaN and infinities;
//   - uint, uint64 and uintptr values above math.MaxInt64, and any other
//     integer beyond int64 that a float64 would round: the relay publishes
//     such integers as float64 (send big numbers as strings);
//   - json.Number text that is not a JSON number or overflows float64;
//   - strings that are not valid UTF-8 (encoding/json would replace the
//     bytes) or hold a NUL (jsonb cannot);
//   - values encoding/json cannot encode (channels, functions, cycles);
//   - keys, at any depth, that are empty or longer than the 255 bytes of an
//     AMQP short string;
//   - objects and arrays nested more than 32 levels below the headers, or
//     holding more than 8192 entries (the headers themselves included;
//     nil values in an object are left out and do not count): consumers
//     using amqp091-go (v1.16 and later) cannot read them, and would drop
//     their connection over the message each time it is delivered.
//
// # Properties
//
// Type, CorrelationID, ReplyTo, Expiration, Priority, ContentEncoding and
// AppID become the AMQP properties of that name (columns of migration
// 005). Expiration counts from the enqueuing transaction's start: the
// relay sends what remains, and parks a message whose time ran out before
// it was published as dead. A batch that sets none of them also goes into
// a table not yet migrated to 005, so the library may be upgraded first.
//
// # Tracing
//
// When ctx holds a valid OpenTelemetry span, Enqueue adds its trace context
// to each message's headers through the global propagator
// (otel.SetTextMapPropagator) when the application set one, else as W3C
// Trace Context (traceparent, tracestate). A message that already carries
// a traceparent keeps it; the caller's Headers map is not changed. The
// consumer reads the producer's context from the AMQP headers; the relay,
// when tracing, links its publish span to it.
//
// # Table
//
// Enqueue and EnqueueSQL write to the table "outbox", found through the
// connection's search_path. For another table, or to name the schema,
// create a Writer once with NewWriter("billing.outbox") and use its
// methods. `outbox-relay migrate` creates the table; it also creates the SQL
// function outbox_enqueue(exchange, routing_key, payload, ...) for writers
// in other languages.
package outbox
