package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/schema"
)

// pgStore is the PostgreSQL side of the relay: claims, settles and the
// waiting flag the insert trigger reads.
type pgStore struct {
	pool        *pgxpool.Pool
	table       schema.Table
	maxAttempts int
	backoff     func(attempts int) time.Duration

	claimSQL, promoteSQL, deleteSQL, failSQL, waitingSQL, writersSQL string
	// props says the table has the AMQP property columns (migration 005)
	// and claimSQL reads them (see setProperties).
	props bool

	// maxBytes bounds the payload bytes a claim loads, and maxRowBytes
	// the payload of a row it loads at all (see claimQuery); 0 is no
	// bound.
	maxBytes, maxRowBytes int64
	// rowBytes estimates the payload bytes of a row, from recent claims;
	// 0 while there is no estimate. With maxBytes it sets how many rows a
	// claim asks for (see rowLimit). Only the loop's goroutine claims.
	rowBytes float64
	// lastRows is how many rows the last claim took (see queueClaim).
	lastRows int

	// owner is the backend pid of the session holding this relay's
	// partition locks (its LISTEN connection), 0 to claim without the
	// check, and owned the partitions it owns, ascending (see SetOwner).
	owner int32
	owned []int
	// partitions is the table's P; recorded says the table records it
	// (migration 007), and claimSQL checks and uses it.
	partitions int
	recorded   bool

	// live holds the claims not yet settled (see heldIDs). Like every
	// field, only the loop's goroutine touches it.
	live map[*claim]struct{}
	// writersSeen says the last Arm found a writer's transaction open.
	writersSeen bool
	// promoteAfter is when the next claim promotes due rows again (see
	// promoteEvery); the zero time is at once.
	promoteAfter time.Time
}

// lockParts splits a 64-bit advisory lock key as pg_locks shows it.
func lockParts(key int64) (classid, objid int64) {
	return int64(uint64(key) >> 32), int64(uint64(key) & 0xffffffff)
}

func newStore(pool *pgxpool.Pool, t schema.Table, maxAttempts int, backoff func(int) time.Duration) *pgStore {
	tbl := t.Ident()
	return &pgStore{
		pool:        pool,
		table:       t,
		maxAttempts: maxAttempts,
		backoff:     backoff,
		live:        make(map[*claim]struct{}),
		// The latest schema, until Run finds out (see setProperties and
		// SetPartitions).
		claimSQL:   claimQuery(t, true, true),
		props:      true,
		partitions: 1,
		recorded:   true,
		// Due rows of delayed_idx (delayed by their writer, or backing off
		// after a failure) go back to claim_idx:
		// available_at = created_at reads "available", and the claim stays
		// one ordered index walk. It runs in the claim's transaction, which
		// commits even when it claims nothing, so the claim sees what it
		// promoted and a promotion is never undone. A row the promotion
		// moved but the claim did not take (past the batch, or behind its
		// key) stays locked until that batch is settled; a later claim
		// skips it, and later rows of its key wait, as it is still in
		// delayed_idx for them.
		//
		// A due row that waits behind an earlier row of its key not due yet
		// is left where it is: moving it would change nothing (the claim
		// would hold it back), and counting it against $1 would let enough
		// of them keep every other due row from being promoted.
		//
		// The ids come as an array (an InitPlan) rather than through IN:
		// PostgreSQL then plans the same index scans whether it knows $1
		// or not, so it keeps one generic plan. With IN, it planned the
		// statement anew at every claim (0.6 ms), and its generic plan
		// would have scanned the whole table.
		promoteSQL: `update ` + tbl + `
   set available_at = created_at
 where id = any(array(
        select id from ` + tbl + ` d
         where dead_at is null and available_at <> created_at and available_at <= now()
           and (partition_key is null or not exists (
                select 1 from ` + tbl + ` e
                 where e.partition_key = d.partition_key
                   and e.id < d.id
                   and e.dead_at is null
                   and e.available_at <> e.created_at
                   and e.available_at > now()))
         order by available_at, id
         limit $1
           for update skip locked))`,
		// The ids come through an InitPlan, as in promoteSQL: with
		// any($1) PostgreSQL planned the delete anew at every settle
		// (0.1 ms of its bind, the array's length being known), and
		// never settled on a generic plan.
		deleteSQL: `delete from ` + tbl + ` where id = any(array(select unnest($1::bigint[])))`,
		// A row parked at once (f.park: it expired) was never sent: its
		// attempts stay as they were.
		failSQL: `update ` + tbl + ` o
   set attempts = o.attempts + case when f.park then 0 else 1 end,
       last_error = f.err,
       available_at = case when f.park or o.attempts + 1 >= $4 then o.available_at
                           else clock_timestamp() + f.delay_ms * interval '1 millisecond' end,
       dead_at = case when f.park or o.attempts + 1 >= $4 then clock_timestamp() end
  from unnest($1::bigint[], $2::text[], $3::bigint[], $5::boolean[]) as f(id, err, delay_ms, park)
 where o.id = f.id
returning o.id, o.dead_at is not null`,
		// The flag the insert trigger reads (migration 002): setval is
		// seen by every session at once and outside this transaction.
		waitingSQL: `select setval($1::regclass, $2::bigint)`,
		// Whether a live session other than this one holds ROW EXCLUSIVE
		// on the table: a transaction that wrote to it and has not ended
		// (see Arm).
		writersSQL: `select exists (select 1 from pg_locks
         where locktype = 'relation' and relation = $1::regclass
           and database = (select oid from pg_database where datname = current_database())
           and mode = 'RowExclusiveLock' and granted
           and pid is not null and pid <> pg_backend_pid())`,
	}
}

// discard closes a connection whose round trip failed, with whatever
// transaction it has open. Given back to the pool, it would be closed in
// the background, and until the server ended that transaction its row
// locks, no longer in heldIDs, would make a claim pass over those rows and
// take later rows of their keys first. Closing it here tells the server
// at once, as long as the socket still works.
func discard(conn *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Hijack().Close(ctx)
}

// settled reports what Settle did, for logs and metrics.
type settled struct {
	deleted int
	retried int
	dead    []int64
}

// Settle deletes acked rows, records failed ones (attempts+1, last_error,
// a back-off, or dead_at once MaxAttempts is reached), leaves not-sent rows
// untouched, and commits, releasing the claim's locks.
//
// With next > 0 it then claims up to next rows on the same connection, in
// the same round trip (see Claim), and returns that claim too, or why it
// failed. A failed settle claims nothing.
func (s *pgStore) Settle(ctx context.Context, c *claim, results []Result, next int) (st settled, nc *claim, settleErr, claimErr error) {
	conn := c.conn
	if conn == nil {
		return st, nil, nil, nil // an empty claim holds nothing
	}
	c.conn = nil
	delete(s.live, c)

	var acked, failedIDs, delays []int64
	var errs []string
	var park []bool
	for _, r := range results {
		switch r.Outcome {
		case Acked:
			acked = append(acked, r.Row.ID)
		case Failed:
			failedIDs = append(failedIDs, r.Row.ID)
			errs = append(errs, lastError(r))
			delays = append(delays, s.backoff(r.Row.Attempts+1).Milliseconds())
			park = append(park, r.Park)
		}
	}
	batch := &pgx.Batch{}
	if len(acked) > 0 {
		batch.Queue(s.deleteSQL, acked).Exec(func(ct pgconn.CommandTag) error {
			st.deleted = int(ct.RowsAffected())
			return nil
		})
	}
	if len(failedIDs) > 0 {
		batch.Queue(s.failSQL, failedIDs, errs, delays, s.maxAttempts, park).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var id int64
				var dead bool
				if err := rows.Scan(&id, &dead); err != nil {
					return err
				}
				if dead {
					st.dead = append(st.dead, id)
				} else {
					st.retried++
				}
			}
			return rows.Err()
		})
	}
	committed := false
	batch.Queue("commit").Exec(func(pgconn.CommandTag) error {
		committed = true
		return nil
	})
	var cl *claiming
	if next > 0 {
		cl = s.queueClaim(batch, next)
	}
	err := conn.SendBatch(ctx, batch).Close()
	switch {
	case err != nil && !committed:
		discard(conn)
		return settled{}, nil, err, nil
	case errors.Is(err, errSchemaChanged):
		// Settled; the claim was given up, and is made again with the
		// property columns.
		discard(conn)
		nc, claimErr = s.Claim(ctx, next)
		return st, nc, nil, claimErr
	case err != nil:
		discard(conn)
		return st, nil, nil, fmt.Errorf("claim: %w", err)
	case cl == nil:
		conn.Release()
		return st, nil, nil, nil
	}
	nc, claimErr = s.hold(ctx, conn, cl)
	return st, nc, nil, claimErr
}

// SetOwner sets the backend pid of the session holding this relay's
// partition locks, and the partitions it owns; pid 0 claims without the
// check.
func (s *pgStore) SetOwner(pid int32, owned []int) { s.owner, s.owned = pid, owned }

// SetPartitions sets the table's P, and whether the table records it.
func (s *pgStore) SetPartitions(p int, recorded bool) {
	s.partitions, s.recorded = p, recorded
	s.claimSQL = claimQuery(s.table, s.props, recorded)
}

// SetWaiting raises the wake-up flag, or lowers it unless another relay
// sleeps on LISTEN (see queueFlag); the insert trigger sends a NOTIFY only
// while it is up.
func (s *pgStore) SetWaiting(ctx context.Context, waiting bool) error {
	conn, err := s.pool.Acquire(ctx)
	if err == nil {
		b := &pgx.Batch{}
		s.queueFlag(b, waiting)
		if err = conn.SendBatch(ctx, b).Close(); err != nil {
			discard(conn)
		} else {
			conn.Release()
		}
	}
	if err != nil {
		return fmt.Errorf("set waiting=%t: %w", waiting, err)
	}
	return nil
}

// maxLastError bounds last_error so a huge broker reply cannot bloat rows.
const maxLastError = 1000

func lastError(r Result) string {
	msg := "unknown error"
	if r.Err != nil {
		msg = r.Err.Error()
	}
	return Clip(strings.ToValidUTF8(msg, "?"), maxLastError)
}

// Fence waits until every claim transaction made on partitions before it,
// by whichever relay, has ended: settled, or died with its session. A relay
// calls it for the partitions it gained before it claims for them. Every
// claim takes its partitions' "in flight" advisory locks shared, for its
// transaction; Fence takes them exclusively, which waits for those. A
// previous owner still settling what it has on the wire therefore delays
// the new owner instead of being overtaken by it: the new owner never
// publishes a row of a key while an earlier row of that key is unsettled
// at the old one. Claims of the old owner made meanwhile find the lock
// requested and claim nothing (a shared try-lock gives way to a waiting
// exclusive request), so the two never deadlock.
//
// The wait is bounded by wait (lock_timeout and statement_timeout for this
// transaction); an error says it did not end in time.
func (s *pgStore) Fence(ctx context.Context, wait time.Duration, partitions []int) error {
	ctx, cancel := context.WithTimeout(ctx, wait+dbTimeout)
	defer cancel()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("fence: %w", err)
	}
	keys := make([]int64, len(partitions))
	for i, p := range partitions {
		keys[i] = s.table.PartitionLockKey("inflight", p)
	}
	b := &pgx.Batch{}
	b.Queue("begin")
	b.Queue(fmt.Sprintf("set local lock_timeout = %d", wait.Milliseconds()))
	b.Queue(fmt.Sprintf("set local statement_timeout = %d", wait.Milliseconds()+1000))
	b.Queue("select pg_advisory_xact_lock(k) from unnest($1::bigint[]) k", keys)
	b.Queue("commit")
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		discard(conn)
		return fmt.Errorf("fence: wait for earlier claims to settle: %w", err)
	}
	conn.Release()
	return nil
}
