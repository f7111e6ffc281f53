package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

// The poison episode's pace.
const (
	poisonPoll   = 250 * time.Millisecond // look at the row this often
	retryTimeout = 30 * time.Second       // for `outbox-relay dead retry`
)

// poisonRow is the event the jobs service sent to a missing exchange.
type poisonRow struct {
	messageID outbox.MessageID
	job       int64
}

// poisonWatch plays the operator in the poison episode. It waits until the
// relay parks the row dead and prints the command that lists it; fixAfter
// later it fixes the cause (the audit service declares the exchange and
// binds its queue) and prints the command that retries the row; if the row
// is still dead retryAfter later, it runs that command itself. Someone may
// retry the row by hand at any time; if that was before the fix, the row
// dies again and the watch goes on.
//
// When production stops mid-episode, the watch fixes the cause and retries
// the row at once, and says so: the row's event was committed, so the final
// check expects it, and the demo would rather deliver it than leave it out.
type poisonWatch struct {
	pool       *pgxpool.Pool
	table      schema.Table
	tableArg   string // as the user wrote it, for the printed commands
	exchange   string
	relay      *relayProc
	audit      *auditService
	out        *printer
	fixAfter   time.Duration
	retryAfter time.Duration
	rows       <-chan poisonRow
}

// rowState is what the table says about the poison row.
type rowState struct {
	id       int64
	gone     bool // published and deleted (or purged by hand)
	dead     bool
	attempts int
	lastErr  string
}

// run plays the episode for the row received on w.rows, until the row has
// left the table or ctx is done. stopping is closed when production has
// stopped; if no row came by then, there is no episode.
func (w *poisonWatch) run(ctx context.Context, stopping <-chan struct{}) error {
	var p poisonRow
	select {
	case p = <-w.rows:
	case <-ctx.Done():
		return nil
	case <-stopping:
		select {
		case p = <-w.rows: // the jobs service is done: it sent the row or never will
		default:
			return nil
		}
	}
	tick := time.NewTicker(poisonPoll)
	defer tick.Stop()
	var (
		hurry    bool      // production stopped: fix and retry now
		deadSeen bool      // the row was seen dead once
		wasDead  bool      // at the last look
		retried  bool      // by us, since the last look
		fixed    bool      // the exchange exists
		fixAt    time.Time // once deadSeen
		retryAt  time.Time // once fixed
	)
	for {
		r, err := w.lookup(ctx, p.messageID)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		now := time.Now()
		switch {
		case r.gone:
			if !fixed {
				w.out.printf("ops", "the poison row left the table before the demo fixed anything: published after a fix by hand, or purged (then its event is lost, and the check says so)")
			}
			return nil
		case r.dead && !deadSeen:
			deadSeen, fixAt = true, now.Add(w.fixAfter)
			w.out.printf("ops", "row %d is dead after %s: %s. Try: %s", r.id, plural(r.attempts, "attempt"), r.lastErr, w.command("dead", "list"))
		case r.dead && !wasDead:
			w.out.printf("ops", "row %d is dead again: %s", r.id, r.lastErr)
		case !r.dead && wasDead && !retried:
			if fixed {
				w.out.printf("ops", "row %d is no longer dead: someone retried it; the relay publishes it now", r.id)
			} else {
				w.out.printf("ops", "row %d is no longer dead: someone retried it, but exchange %s still does not exist, so it will fail again", r.id, w.exchange)
			}
		}
		wasDead = r.dead
		if !r.dead {
			retried = false
		}
		if !fixed && (hurry || deadSeen && !now.Before(fixAt)) {
			if err := w.fix(); err != nil {
				return err
			}
			fixed, retryAt = true, time.Now().Add(w.retryAfter)
			if hurry {
				w.out.printf("ops", "the exchange exists now")
			} else {
				w.out.printf("ops", "the exchange exists now. Retry the row: %s", w.command("dead", "retry", "-all"))
			}
		}
		if fixed && r.dead && (hurry || !now.Before(retryAt)) {
			if hurry {
				w.out.printf("ops", "retrying row %d myself: %s", r.id, w.command("dead", "retry", "-all"))
			} else {
				w.out.printf("ops", "nobody retried row %d within %s: retrying it myself: %s", r.id, w.retryAfter, w.command("dead", "retry", "-all"))
			}
			rctx, cancel := context.WithTimeout(ctx, retryTimeout)
			err := w.relay.retryDead(rctx, "ops")
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			retried, retryAt = true, time.Now().Add(w.retryAfter)
		}
		select {
		case <-tick.C:
		case <-stopping:
			stopping, hurry = nil, true
			w.out.printf("ops", "production stopped mid-episode: the audit event was committed, so the check expects it; the demo repairs it now")
		case <-ctx.Done():
			return nil
		}
	}
}

// fix declares the missing exchange and binds the audit queue to it.
func (w *poisonWatch) fix() error {
	w.out.printf("ops", "fixing the cause: declaring exchange %s (fanout, durable); the audit service binds its queue to it", w.exchange)
	return w.audit.bind(w.exchange)
}

// lookup reads the state of the row with message id id.
func (w *poisonWatch) lookup(ctx context.Context, id outbox.MessageID) (rowState, error) {
	qctx, cancel := context.WithTimeout(ctx, lagQueryTimeout)
	defer cancel()
	var r rowState
	err := w.pool.QueryRow(qctx, `select id, attempts, dead_at is not null, coalesce(last_error, '')
  from `+w.table.Ident()+` where message_id = $1::uuid`, id.String()).Scan(&r.id, &r.attempts, &r.dead, &r.lastErr)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return rowState{gone: true}, nil
	case err != nil:
		return r, fmt.Errorf("look up the poison row: %w", err)
	}
	return r, nil
}

// command is the shell command that runs the relay binary with args on the
// demo's table, e.g. "OUTBOX_TABLE=outbox_demo.outbox bin/outbox-relay dead list".
func (w *poisonWatch) command(args ...string) string {
	return "OUTBOX_TABLE=" + shellQuote(w.tableArg) + " " + shellQuote(w.relay.path) + " " + strings.Join(args, " ")
}

// shellSafe matches the words a POSIX shell takes as they are.
var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_./:=@%+,-]+$`)

// shellQuote quotes s for a POSIX shell, if it needs it.
func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
