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

func (f DeadFilter) where() (string, []any, error) {
	if len(f.IDs) == 0 && !f.All {
		return "", nil, errors.New("name dead rows by id, or select all of them")
	}
	cond := "dead_at is not null"
	var args []any
	if len(f.IDs) > 0 {
		args = append(args, f.IDs)
		cond += fmt.Sprintf(" and id = any($%d::bigint[])", len(args))
	}
	if f.Exchange != nil {
		args = append(args, *f.Exchange)
		cond += fmt.Sprintf(" and exchange = $%d", len(args))
	}
	if f.OlderThan > 0 {
		args = append(args, f.OlderThan.Seconds())
		cond += fmt.Sprintf(" and dead_at <= now() - make_interval(secs => $%d)", len(args))
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
	cond, args, err := f.where()
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

// RetryDead makes the dead rows f selects available again now, with their
// attempts reset (last_error is kept until the next attempt), and wakes the
// relay with a NOTIFY. It returns the ids it revived.
func RetryDead(ctx context.Context, db Execer, t schema.Table, f DeadFilter) ([]int64, error) {
	cond, args, err := f.where()
	if err != nil {
		return nil, err
	}
	var ids []int64
	err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `update `+t.Ident()+`
   set dead_at = null, attempts = 0, available_at = now()
 where `+cond+` returning id`, args...)
		if err != nil {
			return err
		}
		if ids, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			return err
		}
		if len(ids) > 0 {
			// Sent at commit, whether or not the relay says it waits.
			_, err = tx.Exec(ctx, "select pg_notify($1, '')", t.Channel())
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("retry dead rows: %w", err)
	}
	return ids, nil
}

// PurgeDead deletes the dead rows f selects and returns their ids.
func PurgeDead(ctx context.Context, db Querier, t schema.Table, f DeadFilter) ([]int64, error) {
	cond, args, err := f.where()
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
