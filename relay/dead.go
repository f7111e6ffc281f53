package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/schema"
)

// DeadFilter selects dead rows. The zero value selects none: set IDs, or
// All, optionally narrowed by Exchange and OlderThan.
type DeadFilter struct {
	IDs       []int64
	All       bool
	Exchange  *string       // only rows for this exchange
	OlderThan time.Duration // only rows parked at least this long ago
}

// where returns the condition that selects f's rows, its column names
// prefixed with alias (e.g. "o.", or ""), and its arguments.
func (f DeadFilter) where(alias string) (string, []any, error) {
	if len(f.IDs) == 0 && !f.All {
		return "", nil, errors.New("name dead rows by id, or select all of them")
	}
	cond := alias + "dead_at is not null"
	var args []any
	if len(f.IDs) > 0 {
		args = append(args, f.IDs)
		cond += fmt.Sprintf(" and %sid = any($%d::bigint[])", alias, len(args))
	}
	if f.Exchange != nil {
		args = append(args, *f.Exchange)
		cond += fmt.Sprintf(" and %sexchange = $%d", alias, len(args))
	}
	if f.OlderThan > 0 {
		args = append(args, f.OlderThan.Seconds())
		cond += fmt.Sprintf(" and %sdead_at <= now() - make_interval(secs => $%d)", alias, len(args))
	}
	return cond, args, nil
}

// DeadRow is a row parked after too many failed attempts.
type DeadRow struct {
	ID           int64     `json:"id"`
	MessageID    string    `json:"message_id"`
	Exchange     string    `json:"exchange"`
	RoutingKey   string    `json:"routing_key"`
	PartitionKey *string   `json:"partition_key"`
	Attempts     int       `json:"attempts"`
	LastError    *string   `json:"last_error"`
	CreatedAt    time.Time `json:"created_at"`
	DeadAt       time.Time `json:"dead_at"`
}

// ListDead lists up to limit dead rows that f selects (all dead rows when
// f selects neither ids nor All), oldest first.
func ListDead(ctx context.Context, db Querier, t schema.Table, f DeadFilter, limit int) ([]DeadRow, error) {
	if len(f.IDs) == 0 {
		f.All = true
	}
	cond, args, err := f.where("")
	if err != nil {
		return nil, err
	}
	args = append(args, limit)
	rows, err := db.Query(ctx, `select id, message_id::text, exchange, routing_key, partition_key, attempts,
       last_error, created_at, dead_at
  from `+t.Ident()+` where `+cond+fmt.Sprintf(` order by id limit $%d`, len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("list dead rows: %w", err)
	}
	dead, err := pgx.CollectRows(rows, pgx.RowToStructByPos[DeadRow])
	if err != nil {
		return nil, fmt.Errorf("list dead rows: %w", err)
	}
	return dead, nil
}

// Execer is what RetryDead and PurgeDead need: a *pgx.Conn, *pgxpool.Pool
// or pgx.Tx.
type Execer interface {
	Querier
	Begin(ctx context.Context) (pgx.Tx, error)
}

// RetryResult is what RetryDead did.
type RetryResult struct {
	// IDs are the rows made available again.
	IDs []int64
	// Skipped are the rows left dead because reviving them would break one
	// of the table's checks, grouped by check, in the order of the checks'
	// names, then those whose expiration ran out (Check "expired"), which
	// would be parked dead again at once. A row in two groups is in both.
	Skipped []Skipped
}

// Skipped are rows that RetryDead left dead because of one check.
type Skipped struct {
	Check  string  // the check's name, e.g. outbox_routing_key_size
	Reason string  // its comment, e.g. "routing_key longer than 255 bytes", else its condition
	IDs    []int64 // the rows, in id order
}

// RetryDead makes the dead rows f selects available again now, with their
// attempts reset (last_error is kept until the next attempt), and wakes the
// relay with a NOTIFY. Rows that a check of the table would refuse once
// revived (dead rows are exempt from migration 003's size checks, and
// migration 004 parks rows that break them) are left dead and reported in
// Skipped: fix them or purge them. The rest are revived.
func RetryDead(ctx context.Context, db Execer, t schema.Table, f DeadFilter) (RetryResult, error) {
	cond, args, err := f.where("")
	if err != nil {
		return RetryResult{}, err
	}
	var res RetryResult
	err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		skipped, skip, err := breaking(ctx, tx, t, f)
		if err != nil {
			return err
		}
		res.Skipped = skipped
		if skip == nil {
			skip = []int64{} // not NULL: id <> all(NULL) is null for every row
		}
		rows, err := tx.Query(ctx, `update `+t.Ident()+` set `+revivedSet()+`
 where `+cond+fmt.Sprintf(` and id <> all($%d::bigint[]) returning id`, len(args)+1), append(args, skip)...)
		if err != nil {
			return err
		}
		if res.IDs, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			return err
		}
		if len(res.IDs) > 0 {
			// Sent at commit, whether or not the relay says it waits.
			_, err = tx.Exec(ctx, "select pg_notify($1, '')", t.Channel())
		}
		return err
	})
	if err != nil {
		return RetryResult{}, fmt.Errorf("retry dead rows: %w", err)
	}
	return res, nil
}

// PurgeDead deletes the dead rows f selects and returns their ids.
func PurgeDead(ctx context.Context, db Querier, t schema.Table, f DeadFilter) ([]int64, error) {
	cond, args, err := f.where("")
	if err != nil {
		return nil, err
	}
	rows, err := db.Query(ctx, `delete from `+t.Ident()+` where `+cond+` returning id`, args...)
	if err != nil {
		return nil, fmt.Errorf("purge dead rows: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("purge dead rows: %w", err)
	}
	return ids, nil
}
