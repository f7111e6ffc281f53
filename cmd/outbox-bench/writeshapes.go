package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// writeShape is how the writers scenario's writers write: how many of them
// commit at once, and what one transaction of theirs does.
type writeShape struct {
	name    string // for the report
	writers int
	rows    int // rows per transaction
	// write runs one transaction of rows rows into table (quoted).
	write func(ctx context.Context, b *bench, conn *pgxpool.Conn, table string) error
}

// bulkRows is the size of the bulk shapes' transactions.
const (
	bulkRows    = 1000
	enqueueRows = 100
)

// writeShapes are the transactions the writers scenario measures, each the
// same ways: one row per transaction (an event beside a business change),
// 1,000 single-row INSERTs in one transaction (a loader, an ORM flushing
// many objects: the trigger fires for each statement), and Go's Enqueue
// writing 100 messages in one statement.
var writeShapes = []writeShape{
	{name: "one-row transactions", writers: concurrentWriters, rows: 1, write: writeOneRow},
	{name: fmt.Sprintf("%d-row transactions", bulkRows), writers: 8, rows: bulkRows, write: writeBulk},
	{name: fmt.Sprintf("Enqueue of %d messages", enqueueRows), writers: 8, rows: enqueueRows, write: writeEnqueue},
}

func insertSQL(table string) string {
	return "insert into " + table + " (routing_key, payload) values ($1, $2)"
}

func writeOneRow(ctx context.Context, b *bench, conn *pgxpool.Conn, table string) error {
	_, err := conn.Exec(ctx, insertSQL(table), pgx.QueryExecModeCacheStatement, b.queue, b.payload)
	return err
}

// writeBulk sends the transaction in one round trip: begin, the INSERTs,
// commit.
func writeBulk(ctx context.Context, b *bench, conn *pgxpool.Conn, table string) error {
	batch := &pgx.Batch{}
	batch.Queue("begin")
	for range bulkRows {
		batch.Queue(insertSQL(table), b.queue, b.payload)
	}
	batch.Queue("commit")
	return conn.SendBatch(ctx, batch).Close()
}

func writeEnqueue(ctx context.Context, b *bench, conn *pgxpool.Conn, table string) error {
	w, err := outbox.NewWriter(table)
	if err != nil {
		return err
	}
	msgs := make([]outbox.Message, enqueueRows)
	for i := range msgs {
		msgs[i] = outbox.Message{RoutingKey: b.queue, Payload: b.payload}
	}
	_, err = w.Enqueue(ctx, conn, msgs...)
	return err
}
