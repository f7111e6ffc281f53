package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/schema"
)

// waitIdle waits until the relay says it sleeps on LISTEN. It asks on a
// connection of its own, closed at the end, which reports its statistics as
// it goes (see idleLatency).
func (b *bench) waitIdle(ctx context.Context) error { return b.waitIdleOn(ctx, b.table) }

// waitIdleOn is waitIdle for the relays of table t.
func (b *bench) waitIdleOn(ctx context.Context, t schema.Table) error {
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// A backlog takes its time: the writers scenario leaves up to a
	// million rows (Enqueue of 100, in turns with the plain table). Allow
	// it 2,000 rows a second on top of 30s.
	var backlog int64
	if err := conn.QueryRow(ctx, "select count(*) from "+t.Ident()).Scan(&backlog); err != nil {
		return fmt.Errorf("relay idle: count the backlog: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second+time.Duration(backlog)*time.Second/2000)
	defer cancel()
	var qerr error
	err = harness.Poll(pctx, 0, func() bool {
		var waiting bool
		waiting, qerr = schema.RelayWaiting(pctx, conn, t)
		return qerr != nil || waiting
	})
	if qerr != nil {
		return fmt.Errorf("relay idle: %w", qerr)
	}
	if err != nil {
		return fmt.Errorf("relay did not go idle: %w", err)
	}
	return nil
}
