package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/schema"
)

// listenerPingInterval is how often an idle listener connection is pinged so
// that a dead one is noticed and rebuilt while nothing else would tell.
const listenerPingInterval = 5 * time.Second

// sessionCheckTimeout bounds the wait for the listener's own test
// notification (see checkSession); a real session gets it in milliseconds.
const sessionCheckTimeout = 5 * time.Second

// connectTimeout bounds opening the LISTEN session, per host of the URL
// (the dialer gives up on one after 5s).
const connectTimeout = 10 * time.Second

// pgListener owns the dedicated LISTEN connection, which also holds the
// table's relays and members locks and the locks of the partitions the
// relay owns (members.go). It lives outside the pool (a pooled connection could be
// handed to someone else with LISTEN still active) and is used by one
// goroutine.
type pgListener struct {
	config  *pgx.ConnConfig
	channel string
	table   schema.Table
	// probe runs on another session (the pool): it returns that session's
	// backend pid and sends payload on channel.
	probe func(ctx context.Context, channel, payload string) (int32, error)
	waits acquireTracer // logs a slow connect
	// own runs on the session once checkSession proved it the relay's own.
	own      func(ctx context.Context, c *pgconn.PgConn) error
	conn     *pgx.Conn
	pid      int32 // the server's pg_backend_pid() of conn
	lastPing time.Time
	// changed says another relay announced a change of the group (see
	// GroupChanged).
	changed bool
	// owned are the partitions the relay owns: a notification naming
	// another wakes it not (see wakes); listening those whose channels the
	// session listens on (see SetOwned).
	owned, listening map[int]bool
	// claimed is the snapshot of the relay's latest claim that took rows
	// (see Claimed).
	claimed snapshot
	// partitions is the table's P at the last look, when the table
	// records it (see Look); 0 before.
	partitions int
}

func newListener(cfg *pgx.ConnConfig, t schema.Table, probe func(context.Context, string, string) (int32, error),
	waits acquireTracer, own func(context.Context, *pgconn.PgConn) error) *pgListener {
	return &pgListener{config: cfg, channel: t.Channel(), table: t, probe: probe, waits: waits, own: own}
}

// Connected reports whether the LISTEN connection is up.
func (l *pgListener) Connected() bool { return l.conn != nil && !l.conn.IsClosed() }

// PID is the server backend pid of the LISTEN session, as the server
// reports it (a pooler fills the startup data's pid with its own number).
func (l *pgListener) PID() int32 { return l.pid }

// simple runs the listener's queries without prepared statements, so that a
// transaction-mode pooler shows up in checkSession rather than as a
// prepared-statement clash.
var simple = pgx.QueryExecModeSimpleProtocol

// Connect opens the connection, checks that it is a writable session of its
// own (a *setupError says why not) and LISTENs. Notifications sent while it
// was down are lost, so the caller claims right after.
func (l *pgListener) Connect(ctx context.Context) error {
	l.Close(ctx)
	conn, readOnly, err := l.open(ctx)
	if err != nil {
		return err
	}
	// Three round trips and two waits of at most sessionCheckTimeout.
	sctx, cancel := context.WithTimeout(ctx, connectTimeout+2*sessionCheckTimeout)
	defer cancel()
	if err := l.setUp(sctx, conn, readOnly); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		l.pid = 0
		return err
	}
	l.conn = conn
	l.lastPing = time.Now()
	return nil
}

// open connects and asks the server for the session's pid and whether it
// is read-only. That first query is where a session pooler whose pool is
// full makes a client wait (it answers the login itself), so a slow open
// is logged, and one over its bound reported as such.
func (l *pgListener) open(ctx context.Context) (*pgx.Conn, bool, error) {
	w := l.waits.watch(func() []any {
		return []any{slog.String("connection", "listener"),
			slog.String("cause", "a session pooler whose pool is full waits for a free server connection, or a server does not answer")}
	})
	// Each host of a multi-host URL gets its own connectTimeout.
	budget := connectTimeout * time.Duration(1+len(l.config.Fallbacks))
	cctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	var readOnly bool
	conn, err := pgx.ConnectConfig(cctx, l.config)
	if err == nil {
		err = conn.QueryRow(cctx, "select pg_backend_pid(), current_setting('transaction_read_only') = 'on'", simple).
			Scan(&l.pid, &readOnly)
		if err != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
		}
	}
	l.waits.done(w, err)
	switch {
	case err != nil && cctx.Err() != nil && ctx.Err() == nil:
		return nil, false, poolWaitError(fmt.Sprintf("opening the LISTEN session took over %s (a session pool that is full, "+
			"or a server that does not answer)", budget))
	case err != nil:
		return nil, false, fmt.Errorf("connect listener: %w", err)
	}
	return conn, readOnly, nil
}

func (l *pgListener) setUp(ctx context.Context, conn *pgx.Conn, readOnly bool) error {
	if readOnly {
		return errReadOnly
	}
	if _, err := conn.Exec(ctx, "listen "+pgx.Identifier{l.channel}.Sanitize(), simple); err != nil {
		return fmt.Errorf("listen %q: %w", l.channel, withHint(err))
	}
	if err := l.checkSession(ctx, conn); err != nil {
		return err
	}
	if err := l.own(ctx, conn.PgConn()); err != nil {
		return err
	}
	// Every relay's LISTEN session holds the relays lock shared: status
	// lists them, and their rank picks their first broker node. It also
	// holds its own session lock, which its claims check (see claimQuery).
	if _, err := conn.Exec(ctx, "select pg_advisory_lock_shared($1), pg_advisory_lock($2)", simple,
		l.table.LockKey("relays"), sessionLockKey(l.table, l.pid)); err != nil {
		return fmt.Errorf("join the table's relays: %w", err)
	}
	return nil
}

// sessionLockKey is the key of the lock the LISTEN session of backend pid
// holds while it lives: no other session takes it, so that a claim can
// tell that session alive, holding its partitions' locks, by failing a
// shared try of it (see claimQuery). A pid is reused only long after its
// backend has gone, as pg_locks' pid column was trusted before.
func sessionLockKey(t schema.Table, pid int32) int64 {
	return t.LockKey("session/" + strconv.Itoa(int(pid)))
}

// checkSession proves that conn is a server session of its own, as LISTEN
// and session advisory locks need, rather than a transaction-mode (or
// statement-mode) pooler's client connection. It does not depend on which
// server connection such a pooler happens to pick:
//
//   - another session (the pool) reports its backend pid and sends a
//     notification with a random payload on the channel. Two sessions
//     open at once are never served by one backend, except by a pooler;
//   - the notification must reach conn while conn is idle: a transaction
//     pooler links a client to a server connection only inside a
//     transaction, so an idle client never receives one, whichever server
//     connection LISTENs;
//   - conn's backend pid must not have changed meanwhile.
func (l *pgListener) checkSession(ctx context.Context, conn *pgx.Conn) error {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	token := "outbox-relay session check " + hex.EncodeToString(b)
	pctx, cancel := context.WithTimeout(ctx, sessionCheckTimeout)
	defer cancel()
	other, err := l.probe(pctx, l.channel, token)
	switch {
	case err != nil && pctx.Err() != nil:
		return poolWaitError(fmt.Sprintf("no second database session within %s", sessionCheckTimeout))
	case err != nil:
		return fmt.Errorf("check session: %w", withHint(err))
	case other == l.pid:
		return poolerError(fmt.Sprintf("two connections of the relay were answered by the same server backend (pid %d), "+
			"as a transaction-mode pooler does", other))
	}
	wctx, wcancel := context.WithTimeout(ctx, sessionCheckTimeout)
	defer wcancel()
	for {
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			if wctx.Err() != nil && ctx.Err() == nil {
				return poolerError(fmt.Sprintf("a notification sent to the LISTEN connection did not arrive within %s, "+
					"as behind a transaction-mode pooler", sessionCheckTimeout))
			}
			return fmt.Errorf("check session: wait for test notification: %w", err)
		}
		if n.Channel == l.channel && n.Payload == token {
			break
		}
	}
	if err := l.samePID(ctx, conn); err != nil {
		return fmt.Errorf("check session: %w", err)
	}
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
	n, err := l.conn.WaitForNotification(wctx)
	for err == nil && !l.wakes(n) {
		n, err = l.conn.WaitForNotification(wctx)
	}
	switch {
	case err == nil:
		return true, nil
	case ctx.Err() != nil:
		return false, ctx.Err()
	case wctx.Err() != nil && !l.conn.IsClosed():
		// Timed out: the connection is still good unless a ping says not.
		if time.Since(l.lastPing) >= listenerPingInterval {
			if err := l.ping(ctx); err != nil {
				l.Close(ctx)
				return false, err
			}
			l.lastPing = time.Now()
		}
		return false, nil
	}
	l.Close(ctx)
	return false, fmt.Errorf("wait for notification: %w", err)
}

// Ping checks that the session answers, and is still the same backend;
// if not, it closes it and says why.
func (l *pgListener) Ping(ctx context.Context) error {
	if !l.Connected() {
		return errors.New("listener not connected")
	}
	if err := l.ping(ctx); err != nil {
		l.Close(ctx)
		return err
	}
	l.lastPing = time.Now()
	return nil
}

// ping checks that the session answers, and is still the same backend.
func (l *pgListener) ping(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := l.samePID(pctx, l.conn); err != nil {
		return fmt.Errorf("ping listener: %w", err)
	}
	return nil
}

// samePID checks that conn is still served by the backend l.pid: a
// pooler may move a client to another server connection between
// transactions.
func (l *pgListener) samePID(ctx context.Context, conn *pgx.Conn) error {
	var pid int32
	if err := conn.QueryRow(ctx, "select pg_backend_pid()", simple).Scan(&pid); err != nil {
		return err
	}
	if pid != l.pid {
		return poolerError(fmt.Sprintf("the LISTEN connection moved from server backend %d to %d", l.pid, pid))
	}
	return nil
}

// Close closes the connection, if any.
func (l *pgListener) Close(ctx context.Context) {
	if l.conn != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = l.conn.Close(cctx)
		l.conn = nil
	}
	l.pid, l.changed, l.owned, l.listening, l.claimed = 0, false, nil, nil, snapshot{}
}
