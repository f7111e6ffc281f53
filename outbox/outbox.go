package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/schema"
)

// Querier is what Enqueue needs from a pgx handle. pgx.Tx, *pgx.Conn and
// *pgxpool.Pool satisfy it. Pass the transaction that changes your data, so
// that the messages commit or roll back with it; a *pgx.Conn outside a
// transaction or a *pgxpool.Pool commits the messages on their own.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// SQLQuerier is what EnqueueSQL needs from a database/sql handle. *sql.Tx,
// *sql.DB and *sql.Conn satisfy it. The driver must be pgx's
// (github.com/jackc/pgx/v5/stdlib), which passes Go slices as PostgreSQL
// arrays.
type SQLQuerier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Writer enqueues messages into one outbox table. Create it once with
// NewWriter; it holds no connection and is safe for concurrent use.
type Writer struct {
	table schema.Table
	// insert writes the columns of migration 001, insertProps those and
	// the AMQP properties of 005: a batch that sets no property goes into
	// a table not migrated that far too.
	insert, insertProps string
}

// defaultWriter serves the package-level functions.
var defaultWriter = mustNewWriter(schema.TableDefault)

func mustNewWriter(table string) *Writer {
	w, err := NewWriter(table)
	if err != nil {
		panic(err)
	}
	return w
}

// NewWriter returns a Writer for table, written as for OUTBOX_TABLE:
// `outbox`, `schema.outbox`, or double-quoted parts such as
// `"My Schema"."odd.name"`. An unqualified name is found through the
// search_path of the connection used. Empty means schema.TableDefault
// ("outbox").
func NewWriter(table string) (*Writer, error) {
	if table == "" {
		table = schema.TableDefault
	}
	t, err := schema.ParseTable(table)
	if err != nil {
		return nil, fmt.Errorf("outbox: table: %w", err)
	}
	return &Writer{table: t, insert: insertSQL(t, false), insertProps: insertSQL(t, true)}, nil
}

// insertSQL returns the statement that inserts a whole batch in one round
// trip, with the AMQP property columns (props) or without. Each column
// arrives as one array; unnest zips them into rows and ordinality numbers
// them. Rows are inserted in that order, so ids (and therefore the relay's
// publishing order within a partition key) follow the order of the batch.
// The generated message ids are read from the materialized CTE, in order,
// rather than from RETURNING, whose order PostgreSQL does not promise.
//
// Empty strings and zeros stand for SQL null, and null times and ids for
// the columns' defaults, so that every parameter is a plain array that
// both pgx and database/sql pass as is. Expiration comes in microseconds.
func insertSQL(t schema.Table, props bool) string {
	cols, vals, params, names := "", "", "", ""
	if props {
		cols = `, type, correlation_id, reply_to, expiration, priority, content_encoding, app_id`
		vals = `, nullif(type, '') as type, nullif(correlation_id, '') as correlation_id,
           nullif(reply_to, '') as reply_to, nullif(expiration_us, 0) * interval '1 microsecond' as expiration,
           nullif(priority, 0)::smallint as priority, nullif(content_encoding, '') as content_encoding,
           nullif(app_id, '') as app_id`
		params = `, $9::text[], $10::text[], $11::text[], $12::bigint[], $13::int[], $14::text[], $15::text[]`
		names = `, type, correlation_id, reply_to, expiration_us, priority, content_encoding, app_id`
	}
	return `with m as materialized (
    select ord, exchange, routing_key, nullif(partition_key, '') as partition_key,
           coalesce(nullif(message_id, '')::uuid, gen_random_uuid()) as message_id,
           nullif(content_type, '') as content_type, nullif(headers, '')::jsonb as headers,
           payload, coalesce(available_at, now()) as available_at` + vals + `
    from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::timestamptz[]` + params + `)
        with ordinality as u(exchange, routing_key, partition_key, message_id, content_type, headers, payload, available_at` + names + `, ord)
), ins as (
    insert into ` + t.Ident() + ` (exchange, routing_key, partition_key, message_id, content_type, headers, payload, available_at` + cols + `)
    select exchange, routing_key, partition_key, message_id, content_type, headers, payload, available_at` + cols + `
    from m order by ord
)
select message_id::text from m order by ord`
}

// batch holds the columns of a batch, one array each.
type batch struct {
	exchange, routingKey, partitionKey, messageID, contentType, headers []string
	payload                                                             [][]byte
	availableAt                                                         []*time.Time
	// The AMQP properties, when a message of the batch sets one (props).
	props                                               bool
	typ, correlationID, replyTo, contentEncoding, appID []string
	expirationUS                                        []int64
	priority                                            []int32
}

func (b *batch) args() []any {
	a := []any{b.exchange, b.routingKey, b.partitionKey, b.messageID, b.contentType, b.headers, b.payload, b.availableAt}
	if b.props {
		a = append(a, b.typ, b.correlationID, b.replyTo, b.expirationUS, b.priority, b.contentEncoding, b.appID)
	}
	return a
}

// setProperties lays out the AMQP properties of msgs in columns.
func (b *batch) setProperties(msgs []Message) {
	n := len(msgs)
	b.props = true
	b.typ, b.correlationID, b.replyTo = make([]string, n), make([]string, n), make([]string, n)
	b.contentEncoding, b.appID = make([]string, n), make([]string, n)
	b.expirationUS, b.priority = make([]int64, n), make([]int32, n)
	for i := range msgs {
		m := &msgs[i]
		b.typ[i], b.correlationID[i], b.replyTo[i] = m.Type, m.CorrelationID, m.ReplyTo
		b.contentEncoding[i], b.appID[i] = m.ContentEncoding, m.AppID
		// Rounded up: a positive expiration never becomes none.
		b.expirationUS[i] = int64((m.Expiration + time.Microsecond - 1) / time.Microsecond)
		b.priority[i] = int32(m.Priority)
	}
}

// newBatch checks every message and lays the batch out in columns, adding
// the trace context of ctx to the headers (see withTrace). It returns a
// *MessageError for the first message it refuses.
func newBatch(ctx context.Context, msgs []Message) (*batch, error) {
	n := len(msgs)
	b := &batch{
		exchange: make([]string, n), routingKey: make([]string, n), partitionKey: make([]string, n),
		messageID: make([]string, n), contentType: make([]string, n), headers: make([]string, n),
		payload: make([][]byte, n), availableAt: make([]*time.Time, n),
	}
	props := false
	for i := range msgs {
		m := &msgs[i]
		if err := m.checkFields(); err != nil {
			return nil, &MessageError{Index: i, Err: err}
		}
		props = props || m.hasProperties()
		h, err := encodeHeaders(withTrace(ctx, m.Headers))
		if err != nil {
			return nil, &MessageError{Index: i, Err: err}
		}
		b.exchange[i], b.routingKey[i], b.partitionKey[i] = m.Exchange, m.RoutingKey, m.PartitionKey
		b.contentType[i], b.headers[i] = m.ContentType, h
		if !m.MessageID.IsZero() {
			b.messageID[i] = m.MessageID.String()
		}
		b.payload[i] = m.Payload
		if b.payload[i] == nil {
			b.payload[i] = []byte{} // a nil element would be SQL null
		}
		if !m.AvailableAt.IsZero() {
			b.availableAt[i] = &m.AvailableAt
		}
	}
	if props {
		b.setProperties(msgs)
	}
	return b, nil
}

// statement returns the insert for b.
func (w *Writer) statement(b *batch) string {
	if b.props {
		return w.insertProps
	}
	return w.insert
}

// Enqueue inserts msgs into the table in one statement and returns their
// message ids, in the order of msgs. It checks every message first: if one
// is refused (a *MessageError), or the statement fails, nothing is written.
// With no messages it returns nil without a round trip.
func (w *Writer) Enqueue(ctx context.Context, db Querier, msgs ...Message) ([]MessageID, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	b, err := newBatch(ctx, msgs)
	if err != nil {
		return nil, err
	}
	rows, err := db.Query(ctx, w.statement(b), b.args()...)
	if err != nil {
		return nil, fmt.Errorf("outbox: enqueue into %s: %w", w.table, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("outbox: enqueue into %s: %w", w.table, err)
	}
	return parseIDs(ids, len(msgs))
}

// EnqueueSQL is Enqueue for database/sql handles.
func (w *Writer) EnqueueSQL(ctx context.Context, db SQLQuerier, msgs ...Message) ([]MessageID, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	b, err := newBatch(ctx, msgs)
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, w.statement(b), b.args()...)
	if err != nil {
		return nil, fmt.Errorf("outbox: enqueue into %s: %w", w.table, err)
	}
	defer rows.Close()
	ids := make([]string, 0, len(msgs))
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("outbox: enqueue into %s: %w", w.table, err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: enqueue into %s: %w", w.table, err)
	}
	return parseIDs(ids, len(msgs))
}

func parseIDs(s []string, want int) ([]MessageID, error) {
	if len(s) != want {
		return nil, fmt.Errorf("outbox: enqueue: %d ids returned for %d messages", len(s), want)
	}
	ids := make([]MessageID, len(s))
	for i, v := range s {
		id, err := ParseMessageID(v)
		if err != nil {
			return nil, err
		}
		ids[i] = id
	}
	return ids, nil
}

// Enqueue inserts msgs into the table "outbox" (found through the
// connection's search_path); see Writer.Enqueue.
func Enqueue(ctx context.Context, db Querier, msgs ...Message) ([]MessageID, error) {
	return defaultWriter.Enqueue(ctx, db, msgs...)
}

// EnqueueSQL inserts msgs into the table "outbox" (found through the
// connection's search_path) through database/sql; see Writer.Enqueue.
func EnqueueSQL(ctx context.Context, db SQLQuerier, msgs ...Message) ([]MessageID, error) {
	return defaultWriter.EnqueueSQL(ctx, db, msgs...)
}
