package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

// loopAppName is the application_name of the minimal loop's connection:
// the bench finds its backend by it (see cpuMeter).
const loopAppName = "outbox-bench-loop"

// minimalLoop is the simplest honest relay loop, the reference every
// scenario compares the relay with: claim a batch (for update skip
// locked), publish it all, await every confirm, delete, commit; claim again
// at once while it finds rows. One connection and one confirm channel,
// nothing overlapped. drain runs it over a backlog; listen runs it as a
// daemon woken by a NOTIFY on every commit.
type minimalLoop struct {
	conn       *pgx.Conn
	ch         *amqp.Channel
	claim, del string
	batch      int
}

// openLoop connects a minimal loop to table (quoted) on the bench database,
// in this process. The caller closes it.
func (b *bench) openLoop(ctx context.Context, table string) (*minimalLoop, error) {
	ch, err := b.confirmChannel()
	if err != nil {
		return nil, fmt.Errorf("minimal loop: %w", err)
	}
	l, err := newLoop(ctx, b.dbURL, ch, table, b.o.batch)
	if err != nil {
		_ = ch.Close()
	}
	return l, err
}

// newLoop connects a minimal loop to table (quoted) on the database at
// dbURL, publishing on ch, a channel in confirm mode. Its close closes ch.
func newLoop(ctx context.Context, dbURL string, ch *amqp.Channel, table string, batch int) (*minimalLoop, error) {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("minimal loop: %w", err)
	}
	cfg.RuntimeParams["application_name"] = loopAppName
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("minimal loop: %w", err)
	}
	return &minimalLoop{
		conn: conn, ch: ch, batch: batch,
		claim: "select id, routing_key, message_id::text, payload, created_at from " + table +
			" where dead_at is null and available_at <= now() order by id limit $1 for update skip locked",
		del: "delete from " + table + " where id = any($1)",
	}, nil
}

func (l *minimalLoop) close(ctx context.Context) {
	_ = l.ch.Close()
	_ = l.conn.Close(context.WithoutCancel(ctx))
}

// minimalDrain returns a drain of the bench table's backlog by a minimal
// loop, in this process, that calls published when it is done.
func (b *bench) minimalDrain(ctx context.Context) func(published func()) error {
	return func(published func()) error {
		l, err := b.openLoop(ctx, b.table.Ident())
		if err != nil {
			return err
		}
		defer l.close(ctx)
		err = l.drain(ctx)
		published()
		return err
	}
}

// drain runs batches until one finds no rows.
func (l *minimalLoop) drain(ctx context.Context) error {
	for {
		n, err := l.once(ctx)
		if err != nil || n == 0 {
			return err
		}
	}
}

// listen LISTENs on channel, calls ready, then drains and waits for the
// next notification, again and again, until ctx ends (it then returns
// nil). With poll > 0 it also drains when poll passes without a
// notification: on a table with no trigger, it polls. Notifications that
// arrive while it drains are kept by pgx and cost one empty claim.
func (l *minimalLoop) listen(ctx context.Context, channel string, poll time.Duration, ready func()) error {
	if _, err := l.conn.Exec(ctx, "listen "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen %q: %w", channel, err)
	}
	ready()
	for {
		if err := l.drain(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if poll > 0 {
			wctx, cancel = context.WithTimeout(ctx, poll)
		}
		_, err := l.conn.WaitForNotification(wctx)
		polled := wctx.Err() != nil
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && !polled:
			return fmt.Errorf("wait for notification: %w", err)
		}
	}
}

// once claims one batch, publishes it, awaits its confirms, deletes it and
// commits; it returns how many rows it found.
func (l *minimalLoop) once(ctx context.Context) (int, error) {
	tx, err := l.conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, l.claim, l.batch)
	if err != nil {
		return 0, err
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
			return 0, err
		}
		batch = append(batch, r)
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if len(batch) == 0 {
		return 0, tx.Commit(ctx)
	}
	dcs := make([]*amqp.DeferredConfirmation, len(batch))
	for i, r := range batch {
		if dcs[i], err = l.ch.PublishWithDeferredConfirmWithContext(ctx, "", r.rk, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, MessageId: r.mid, Timestamp: r.created, Body: r.payload}); err != nil {
			return 0, err
		}
	}
	ids := make([]int64, 0, len(batch))
	for i, dc := range dcs {
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			return 0, fmt.Errorf("minimal loop: nack %v", err)
		}
		ids = append(ids, batch[i].id)
	}
	if _, err := tx.Exec(ctx, l.del, ids); err != nil {
		return 0, err
	}
	return len(batch), tx.Commit(ctx)
}
