package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

// minimalDrain drains the backlog with the simplest honest loop: claim a
// batch, publish it all, await every confirm, delete, commit. One
// connection each, nothing overlapped: what any relay should at least reach.
func (b *bench) minimalDrain(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	ch, err := b.confirmChannel()
	if err != nil {
		return err
	}
	defer ch.Close()
	claim := "select id, routing_key, message_id::text, payload, created_at from " + b.table.Ident() +
		" where dead_at is null and available_at <= now() order by id limit $1 for update skip locked"
	del := "delete from " + b.table.Ident() + " where id = any($1)"
	for {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, claim, b.o.batch)
		if err != nil {
			return err
		}
		type row struct {
			id      int64
			rk, mid string
			payload []byte
			created time.Time
		}
		var batch []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.id, &r.rk, &r.mid, &r.payload, &r.created); err != nil {
				return err
			}
			batch = append(batch, r)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(batch) == 0 {
			return tx.Rollback(ctx)
		}
		dcs := make([]*amqp.DeferredConfirmation, len(batch))
		for i, r := range batch {
			if dcs[i], err = ch.PublishWithDeferredConfirmWithContext(ctx, "", r.rk, true, false, amqp.Publishing{
				DeliveryMode: amqp.Persistent, MessageId: r.mid, Timestamp: r.created, Body: r.payload}); err != nil {
				return err
			}
		}
		ids := make([]int64, 0, len(batch))
		for i, dc := range dcs {
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				return fmt.Errorf("minimal: nack %v", err)
			}
			ids = append(ids, batch[i].id)
		}
		if _, err := tx.Exec(ctx, del, ids); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
	}
}
