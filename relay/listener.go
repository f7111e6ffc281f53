package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// listenerPingInterval is how often an idle listener connection is pinged so
// that a dead one is noticed and rebuilt while nothing else would tell.
const listenerPingInterval = 5 * time.Second

// pgListener owns the dedicated LISTEN connection. It lives outside the pool
// (a pooled connection could be handed to someone else with LISTEN still
// active) and is used by one goroutine.
type pgListener struct {
	config   *pgx.ConnConfig
	channel  string
	conn     *pgx.Conn
	lastPing time.Time
}

func newListener(cfg *pgx.ConnConfig, channel string) *pgListener {
	return &pgListener{config: cfg, channel: channel}
}

// Connected reports whether the LISTEN connection is up.
func (l *pgListener) Connected() bool { return l.conn != nil && !l.conn.IsClosed() }

// Connect opens the connection and LISTENs. Notifications sent while it was
// down are lost, so the caller claims right after.
func (l *pgListener) Connect(ctx context.Context) error {
	l.Close(ctx)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, l.config)
	if err != nil {
		return fmt.Errorf("connect listener: %w", err)
	}
	if _, err := conn.Exec(cctx, "listen "+pgx.Identifier{l.channel}.Sanitize()); err != nil {
		_ = conn.Close(ctx)
		return fmt.Errorf("listen %q: %w", l.channel, err)
	}
	l.conn = conn
	l.lastPing = time.Now()
	return nil
}

// Wait blocks until a notification arrives (true), timeout passes (false) or
// ctx is done. An error means the connection broke; it has been closed.
func (l *pgListener) Wait(ctx context.Context, timeout time.Duration) (bool, error) {
	if !l.Connected() {
		return false, errors.New("listener not connected")
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := l.conn.WaitForNotification(wctx)
	switch {
	case err == nil:
		return true, nil
	case ctx.Err() != nil:
		return false, ctx.Err()
	case wctx.Err() != nil && !l.conn.IsClosed():
		// Timed out: the connection is still good unless a ping says not.
		if time.Since(l.lastPing) >= listenerPingInterval {
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			defer pcancel()
			if err := l.conn.Ping(pctx); err != nil {
				l.Close(ctx)
				return false, fmt.Errorf("ping listener: %w", err)
			}
			l.lastPing = time.Now()
		}
		return false, nil
	}
	l.Close(ctx)
	return false, fmt.Errorf("wait for notification: %w", err)
}

// Close closes the connection, if any.
func (l *pgListener) Close(ctx context.Context) {
	if l.conn != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = l.conn.Close(cctx)
		l.conn = nil
	}
}
