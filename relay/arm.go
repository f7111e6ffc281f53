package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// armWait bounds the wait of Arm for writers in their transactions. New
// writers queue behind the relay's request meanwhile, so it stays short.
const armWait = 5 * time.Millisecond

// Arm raises the wake-up flag, then waits up to armWait for the
// transactions that may have inserted rows while it was down to end, and
// reports whether they did. Only then may the relay sleep on LISTEN, after
// one more claim: a writer that reads the flag after it was raised
// notifies at its commit; one that read it before still holds the ROW
// EXCLUSIVE lock its insert took (from before it read the flag until its
// commit is visible), which LOCK TABLE ... IN SHARE MODE waits for. So
// writers pay nothing for it, and no row waits for the poll however long
// its transaction runs after the insert. false means such a transaction is
// still open: stay awake.
//
// The lock also waits for what cannot have inserted rows: a VACUUM, a
// prepared transaction (it could have, but nobody knows when it commits;
// see the README). If the wait times out, the holders are looked up, and
// only live sessions holding ROW EXCLUSIVE keep the relay awake.
//
// After a try that found a writer open, the next tries only look the
// holders up, which is enough (a writer holds its lock from before it read
// the flag until its commit is visible) and does not make new writers
// wait: a transaction left open for long would otherwise stall them at
// every try.
func (s *pgStore) Arm(ctx context.Context) (bool, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("raise wake-up flag: %w", err)
	}
	if s.writersSeen {
		var writers bool
		b := &pgx.Batch{}
		s.queueFlag(b, true)
		b.Queue(s.writersSQL, s.table.Ident()).QueryRow(func(r pgx.Row) error { return r.Scan(&writers) })
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			discard(conn)
			return false, fmt.Errorf("raise wake-up flag: %w", err)
		}
		conn.Release()
		s.writersSeen = writers
		return !writers, nil
	}
	b := &pgx.Batch{}
	s.queueFlag(b, true)
	b.Queue("begin")
	b.Queue(fmt.Sprintf("set local lock_timeout = %d", armWait.Milliseconds()))
	b.Queue("lock table " + s.table.Ident() + " in share mode")
	b.Queue("commit")
	err = conn.SendBatch(ctx, b).Close()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != sqlstateLockNotAvailable {
		if err != nil {
			discard(conn)
			return false, fmt.Errorf("raise wake-up flag: %w", err)
		}
		conn.Release()
		return true, nil
	}
	var writers bool
	_, err = conn.Exec(ctx, "rollback")
	if err == nil {
		err = conn.QueryRow(ctx, s.writersSQL, s.table.Ident()).Scan(&writers)
	}
	if err != nil {
		discard(conn)
		return false, fmt.Errorf("raise wake-up flag: %w", err)
	}
	conn.Release()
	s.writersSeen = writers
	return !writers, nil
}

// The wake-up flag with several relays. Any relay asleep on LISTEN needs
// the flag up; a relay that claims at a steady pace lowers it, which
// would leave the others asleep without a NOTIFY until their poll. So a
// relay holds the table's sleepers lock, shared, on its LISTEN session
// from before it raises the flag until it lowers it (pgListener.Sleeper),
// and lowers it only while no other relay holds that lock. Both changes
// of the flag take the table's flag lock for their transaction, so a
// relay that goes to sleep between another's check and its lowering
// raises the flag after that lowering, not before.

// queueFlag queues, in a transaction of its own under the flag lock, the
// raising of the flag, or its lowering unless another relay sleeps.
func (s *pgStore) queueFlag(b *pgx.Batch, up bool) {
	b.Queue("begin")
	b.Queue("select pg_advisory_xact_lock($1)", s.table.LockKey("wake-up flag"))
	if up {
		b.Queue(s.waitingSQL, s.table.Derived("relay_waiting"), 1)
	} else {
		classid, objid := lockParts(s.table.LockKey("sleepers"))
		b.Queue(`select setval($1::regclass, 0) where not exists (
        select 1 from pg_locks l where `+heldLock("l", "$2", "$3")+` and l.pid <> $4)`,
			s.table.Derived("relay_waiting"), classid, objid, s.owner)
	}
	b.Queue("commit")
}
