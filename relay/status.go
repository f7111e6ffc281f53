package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/schema"
)

// Querier is what ReadStatus needs: a *pgx.Conn, *pgxpool.Pool or pgx.Tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Status is a snapshot of an outbox table, read straight from the database
// (no relay needs to run).
type Status struct {
	Table   string `json:"table"`
	Pending int64  `json:"pending"`
	// Available counts pending rows whose available_at has passed.
	Available int64 `json:"available"`
	Dead      int64 `json:"dead"`
	// OldestPendingAgeSeconds is the age of the oldest pending row that is
	// available for publishing: the relay's lag. 0 when there is none.
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
	// Leader describes the relay holding the table's leader lock, or is nil.
	Leader    *Leader          `json:"leader"`
	Exchanges []ExchangeStatus `json:"exchanges"`
}

// Leader identifies the active relay by its PostgreSQL session.
type Leader struct {
	PID             int32     `json:"pid"`
	ApplicationName string    `json:"application_name"`
	ClientAddr      string    `json:"client_addr"`
	Since           time.Time `json:"backend_start"`
}

// ExchangeStatus is the per-exchange breakdown of Status.
type ExchangeStatus struct {
	Exchange                string  `json:"exchange"`
	Pending                 int64   `json:"pending"`
	Dead                    int64   `json:"dead"`
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
}

// ReadStatus reads the status of table t (resolved, see schema.Table.Resolve).
// Its counts scan the table's rows, so it costs in proportion to the backlog:
// fine for a command, not for a tight loop.
func ReadStatus(ctx context.Context, db Querier, t schema.Table) (Status, error) {
	st := Status{Table: t.String(), Exchanges: []ExchangeStatus{}}
	rows, err := db.Query(ctx, `select exchange,
       count(*) filter (where dead_at is null),
       count(*) filter (where dead_at is null and available_at <= now()),
       count(*) filter (where dead_at is not null),
       coalesce(extract(epoch from now() - min(created_at) filter (where dead_at is null and available_at <= now())), 0)::float8
  from `+t.Ident()+`
 group by exchange
 order by exchange`)
	if err != nil {
		return st, fmt.Errorf("read status of %s: %w", t, err)
	}
	for rows.Next() {
		var e ExchangeStatus
		var avail int64
		if err := rows.Scan(&e.Exchange, &e.Pending, &avail, &e.Dead, &e.OldestPendingAgeSeconds); err != nil {
			return st, fmt.Errorf("read status of %s: %w", t, err)
		}
		st.Exchanges = append(st.Exchanges, e)
		st.Pending += e.Pending
		st.Available += avail
		st.Dead += e.Dead
		st.OldestPendingAgeSeconds = max(st.OldestPendingAgeSeconds, e.OldestPendingAgeSeconds)
	}
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("read status of %s: %w", t, err)
	}
	classid, objid := lockParts(t.LockKey("leader"))
	var ld Leader
	var addr *string
	err = db.QueryRow(ctx, `select a.pid, a.application_name, host(a.client_addr), a.backend_start
  from pg_locks l join pg_stat_activity a on a.pid = l.pid
 where `+heldLock("l", "$1", "$2")+`
 limit 1`, classid, objid).Scan(&ld.PID, &ld.ApplicationName, &addr, &ld.Since)
	switch {
	case err == pgx.ErrNoRows:
	case err != nil:
		return st, fmt.Errorf("read leader of %s: %w", t, err)
	default:
		if addr != nil {
			ld.ClientAddr = *addr
		} else {
			ld.ClientAddr = "local"
		}
		st.Leader = &ld
	}
	return st, nil
}
