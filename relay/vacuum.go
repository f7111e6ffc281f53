package relay

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lmittmann/tint"
)

// vacuumTimeout bounds one VACUUM. It reads the pages the relay emptied
// and every index of the table in full, so its cost follows the table's
// size: about 75 ms for a million rows. A timeout would throw the work
// away, so it is generous.
const vacuumTimeout = time.Hour

// vacuumer keeps the claim's index walk short while a backlog drains.
//
// A deleted row leaves its entry in claim_idx until VACUUM removes it, and
// every claim walks from the start of the index over the entries of all the
// rows deleted so far. Autovacuum comes at most once a minute
// (autovacuum_naptime) and only after a fifth of the table is dead, so
// while a million-row backlog drains the claim grows from half a
// millisecond to over ten, and the drain slows as it goes. After every
// `every` deleted rows the relay vacuums the table itself, with
// SKIP_LOCKED so that it never waits behind autovacuum, and INDEX_CLEANUP
// on: left to decide, VACUUM skips the indexes when the dead rows sit on
// less than 2% of the table's pages, as they do beside a large population
// of delayed or dead rows. Measured on a million-row backlog: about 75 ms
// per VACUUM of 100,000 deleted rows, and a drain rate that stays flat
// instead of falling by a fifth.
type vacuumer struct {
	pool    *pgxpool.Pool
	table   string // quoted identifier
	every   int64  // deleted rows between VACUUMs
	log     *slog.Logger
	deleted atomic.Int64
	due     chan struct{}
}

func newVacuumer(pool *pgxpool.Pool, table string, every int, log *slog.Logger) *vacuumer {
	return &vacuumer{pool: pool, table: table, every: int64(every), log: log, due: make(chan struct{}, 1)}
}

// rowsDeleted counts rows the relay deleted and makes a VACUUM due after
// every `every` of them.
func (v *vacuumer) rowsDeleted(n int) {
	if v.every <= 0 {
		return
	}
	if v.deleted.Add(int64(n)) >= v.every {
		select {
		case v.due <- struct{}{}:
		default:
		}
	}
}

// run vacuums the table whenever rowsDeleted says so, until ctx is done.
// If the relay's role may not vacuum the table (only its owner may), it
// says so once and leaves the table to autovacuum.
func (v *vacuumer) run(ctx context.Context) {
	if v.every <= 0 {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-v.due:
		}
		v.deleted.Store(0)
		ok, err := v.vacuum(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			// The loop reports database trouble; the next batch of
			// deletes tries again.
			v.log.Warn("vacuum table", slog.String("table", v.table), tint.Err(err))
		case !ok:
			v.log.Info("relay cannot vacuum the table", slog.String("table", v.table),
				slog.String("reason", "its role neither owns it nor has MAINTAIN on it"),
				slog.String("then", "autovacuum keeps it; see OUTBOX_VACUUM_EVERY"))
			return
		}
	}
}

// vacuum runs one VACUUM and reports whether the role may vacuum the table.
func (v *vacuumer) vacuum(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, vacuumTimeout)
	defer cancel()
	conn, err := v.pool.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	// VACUUM only warns, and skips the table, when the role lacks the
	// right: its owner's, or (PostgreSQL 17) the MAINTAIN privilege.
	var allowed bool
	err = conn.QueryRow(ctx, `select pg_has_role(current_user, relowner, 'USAGE')
    or case when current_setting('server_version_num')::int >= 170000
            then has_table_privilege(oid, 'MAINTAIN') else false end
  from pg_class where oid = $1::regclass`, v.table).Scan(&allowed)
	if err != nil {
		return false, fmt.Errorf("check the right to vacuum: %w", err)
	}
	if !allowed {
		return false, nil
	}
	// The session's statement_timeout bounds the relay's short statements;
	// a VACUUM of a large table may take longer, bounded by ctx instead.
	var saved string
	if err := conn.QueryRow(ctx, "select current_setting('statement_timeout')").Scan(&saved); err != nil {
		return true, fmt.Errorf("read statement_timeout: %w", err)
	}
	if _, err := conn.Exec(ctx, "set statement_timeout = 0"); err != nil {
		return true, fmt.Errorf("lift statement_timeout: %w", err)
	}
	defer func() {
		if _, err := conn.Exec(ctx, "select set_config('statement_timeout', $1, false)", saved); err != nil {
			// Not given back to the pool without its bound.
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}()
	begin := time.Now()
	// TRUNCATE false: giving the emptied pages at the end of the table back
	// to the file system takes an ACCESS EXCLUSIVE lock, which would stop
	// the writers, and a WAL flush that a busy disk can hold for seconds.
	// The next rows use those pages anyway.
	if _, err := conn.Exec(ctx, "vacuum (skip_locked, truncate false, index_cleanup on) "+v.table); err != nil {
		return true, fmt.Errorf("vacuum: %w", err)
	}
	v.log.Debug("vacuumed table", slog.String("table", v.table), slog.Duration("took", time.Since(begin)))
	return true, nil
}
