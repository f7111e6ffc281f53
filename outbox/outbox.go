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
	table  schema.Table
	insert string
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
	return &Writer{table: t, insert: insertSQL(t)}, nil
}

// insertSQL returns the statement that inserts a whole batch in one round
// trip. Each column arrives as one array; unnest zips them into rows and
// ordinality numbers them. Rows are inserted in that order, so ids (and
// therefore the relay's publishing order within a partition key) follow the
// order of the batch. The generated message ids are read from the
// materialized CTE, in order, rather than from RETURNING, whose order
// PostgreSQL does not promise.
//
// Empty strings stand for SQL null, and null times and ids for the
// columns' defaults, so that every parameter is a plain array that both pgx
// and database/sql pass as is.
func insertSQL(t schema.Table) string {
	return `with m as materialized (
    select ord, exchange, routing_key, nullif(partition_key, '') as partition_key,
           coalesce(nullif(message_id, '')::uuid, gen_random_uuid()) as message_id,
           nullif(content_type, '') as content_type, nullif(headers, '')::jsonb as headers,
           payload, coalesce(available_at, now()) as available_at
    from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::timestamptz[])
        with ordinality as u(exchange, routing_key, partition_key, message_id, content_type, headers, payload, available_at, ord)
), ins as (
    insert into ` + t.Ident() + ` (exchange, routing_key, partition_key, message_id, content_type, headers, payload, available_at)
    select exchange, routing_key, partition_key, message_id, content_type, headers, payload, available_at
    from m order by ord
)
select message_id::text from m order by ord`
}

// batch holds the columns of a batch, one array each.
type batch struct {
	exchange, routingKey, partitionKey, messageID, contentType, headers []string
	payload                                                             [][]byte
	availableAt                                                         []*time.Time
}

func (b *batch) args() []any {
	return []any{b.exchange, b.routingKey, b.partitionKey, b.messageID, b.contentType, b.headers, b.payload, b.availableAt}
}

// newBatch checks every message and lays the batch out in columns. It
// returns a *MessageError for the first message it refuses.
func newBatch(msgs []Message) (*batch, error) {
	n := len(msgs)
	b := &batch{
		exchange: make([]string, n), routingKey: make([]string, n), partitionKey: make([]string, n),
		messageID: make([]string, n), contentType: make([]string, n), headers: make([]string, n),
		payload: make([][]byte, n), availableAt: make([]*time.Time, n),
	}
	for i := range msgs {
		m := &msgs[i]
		if err := m.checkFields(); err != nil {
			return nil, &MessageError{Index: i, Err: err}
		}
		h, err := encodeHeaders(m.Headers)
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
	return b, nil
}

// Enqueue inserts msgs into the table in one statement and returns their
// message ids, in the order of msgs. It checks every message first: if one
// is refused (a *MessageError), or the statement fails, nothing is written.
// With no messages it returns nil without a round trip.
func (w *Writer) Enqueue(ctx context.Context, db Querier, msgs ...Message) ([]MessageID, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	b, err := newBatch(msgs)
	if err != nil {
		return nil, err
	}
	rows, err := db.Query(ctx, w.insert, b.args()...)
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
	b, err := newBatch(msgs)
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, w.insert, b.args()...)
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
