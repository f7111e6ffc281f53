package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/schema"
)

// claimQuery returns the claim of table t.
//
// Rows are taken in id order, never after a "last id seen" cursor (ids are
// not assigned in commit order): the available rows with the lowest ids, in
// one walk of claim_idx that locks as it goes and stops at $1 rows. FOR
// UPDATE SKIP LOCKED passes over the rows of batches still in flight, so
// the claim made while a batch is on the wire takes the rows behind it; the
// claim locks no row it does not return. Locks are held until the batch is
// settled, so a second claimer never takes the same rows. $4 lists the rows
// this relay holds: passing over them by id is a few times cheaper than
// trying each one's lock.
//
// A row of claim_idx (available_at = created_at) asked for no delay, so the
// claim does not compare available_at with now(): now() is when this
// transaction began, and a row committed since with a later created_at
// would have been passed over while a later row of its key was taken.
//
// Rows delayed or backing off live in delayed_idx instead, and promoteSQL
// moves them into claim_idx once due. A row waits while an earlier row of
// its partition_key is still in delayed_idx (not due, or due and not yet
// promoted); dead rows do not hold their key back.
//
// Payloads are bounded by bytes ($5) as well as rows: the outer query
// returns the payloads of the rows within that budget (the first row's
// always, however large) and null past it. The rows past it are locked all
// the same and come back marked not loaded, with their size. So does a row
// larger than any message may be ($6, MaxMessageSize), wherever it is: it
// fails without its payload ever being read, which could be far more than
// the relay's memory. PostgreSQL forbids window
// functions beside FOR UPDATE in one query level, hence the subquery; the
// walk inside is unchanged. octet_length reads the size of a TOASTed
// payload from its pointer, and the sort the window needs (the locked rows
// are not known to be in order) moves pointers too: the payloads past the
// budget are never read (TestClaimReadsOnlyPayloadsWithinBudget counts the
// pages). The budget is used above the walk only, so the plan is the same
// for every value of it and stays generic.
//
// The claim takes rows of the partitions this relay owns only (see
// share.go), and only while its LISTEN session ($2, its backend pid) is
// alive: that session holds the partition locks, all of them or, gone,
// none, and also its own session lock ($3, see sessionLockKey), which no
// other session ever takes. A shared try of that lock fails while the
// session holds it, and succeeds once it is gone: a relay that lost its
// session stops at its next claim, not when it next idles. The try is a
// scalar subquery so that it runs once per claim, in the one-time filter
// with the other checks, not for every row the walk passes. (The claim
// asked pg_locks before, which copies the server's whole lock table: two
// thirds of an empty claim's time.) Each claim holds the "in flight" lock
// of every partition it claims for ($7) shared until its settle, and only
// while no new owner fences them off (see Fence). With recorded, the table
// records its P (migration 007): the claim checks that P is still the one
// the relay has ($8), so that no claim maps rows with a P that `migrate`
// has changed, and takes the rows of the partitions listed in $9 (null:
// all of them). Without, P is 1, and the claim checks that the settings
// table ($8, its name) has not appeared meanwhile: the relay takes the
// table's P at its next look.
//
// Each row also carries the claim's snapshot (computed once): a
// transaction it sees as committed had its rows of the relay's partitions
// there to take, and its notification, still on its way, need not wake
// the relay (see pgListener.Claimed).
//
// With props, the claim reads the AMQP property columns of migration 005,
// and for a row with an expiration the milliseconds it has left, by the
// database's clock (the one created_at was set by). Without, against a
// table not migrated that far, it returns nulls in their place.
func claimQuery(t schema.Table, props, recorded bool) string {
	tbl := t.Ident()
	properties := `null::text as type, null::text as correlation_id, null::text as reply_to, null::smallint as priority,
       null::text as content_encoding, null::text as app_id, null::bigint as expires_ms`
	if props {
		properties = `type, correlation_id, reply_to, priority, content_encoding, app_id,
       floor(extract(epoch from created_at + expiration - clock_timestamp()) * 1000)::bigint as expires_ms`
	}
	partitionsCheck, partitionsFilter := `to_regclass($8::text) is null`, ""
	if recorded {
		partitionsCheck = `$8::integer = (select partitions from ` + t.Derived("settings") + `)`
		partitionsFilter = `
   and ($9::integer[] is null or ` + inPartitions(t, "o", "$8", "$9") + `)`
	}
	return `select id, exchange, routing_key, partition_key, message_id,
       content_type, headers, case when loaded then payload end as payload, size, created_at, attempts, loaded,
       type, correlation_id, reply_to, priority, content_encoding, app_id, expires_ms,
       (select pg_current_snapshot())::text as snapshot
  from (select c.*, octet_length(c.payload) as size,
               octet_length(c.payload) <= $6::bigint
               and coalesce(sum(octet_length(c.payload)) over w + octet_length(c.payload) <= $5::bigint, true) as loaded
          from (
select id, exchange, routing_key, partition_key, message_id::text,
       content_type, headers, payload, created_at, attempts,
       ` + properties + `
  from ` + tbl + ` o
 where dead_at is null
   and available_at = created_at
   and id not in (select unnest($4::bigint[]))
   and ` + keyFree(tbl, "o") + `
   and ($2 = 0 or ((select not pg_try_advisory_xact_lock_shared($3::bigint))
        and (select bool_and(pg_try_advisory_xact_lock_shared(k)) from unnest($7::bigint[]) k)
        and ` + partitionsCheck + `))` + partitionsFilter + `
 order by id
 limit $1
   for update skip locked) c
        window w as (order by c.id rows between unbounded preceding and 1 preceding)) b
 order by id`
}

// keyFree is the claim's per-key order rule, for the row aliased alias of
// table tbl: it has no key, or no earlier row of its key waits in
// delayed_idx (delayed, or backing off). Dead rows do not hold it back.
func keyFree(tbl, alias string) string {
	return `(` + alias + `.partition_key is null or not exists (
        select 1 from ` + tbl + ` e
         where e.partition_key = ` + alias + `.partition_key
           and e.id < ` + alias + `.id
           and e.dead_at is null
           and e.available_at <> e.created_at))`
}

// heldLock matches, in pg_locks aliased alias, the granted session
// advisory lock of this database whose 64-bit key is split (see lockParts)
// into the parameters classid and objid.
func heldLock(alias, classid, objid string) string {
	a := alias + "."
	return a + `locktype = 'advisory' and ` + a + `granted and ` + a + `objsubid = 1
           and ` + a + `classid = ` + classid + `::bigint::oid and ` + a + `objid = ` + objid + `::bigint::oid
           and ` + a + `database = (select oid from pg_database where datname = current_database())`
}

// claim is one claimed batch: the rows, and the connection whose open
// transaction holds their locks until Settle.
type claim struct {
	conn *pgxpool.Conn
	rows []Row
	// loaded counts the rows claimed with their payload; the others, past
	// the byte bound, are deferred (see Row).
	loaded int
	// full says that more rows wait: the claim took as many rows as it
	// asked for, or deferred some.
	full bool
	// at is when the claim's transaction began.
	at time.Time
	// snapshot is the claim's snapshot, when it took rows (see
	// claimQuery): "" for an empty claim.
	snapshot string
}

// deferred reports whether the claim holds rows it must not publish.
func (c *claim) deferred() bool { return c.loaded < len(c.rows) }

// Claim begins a transaction and locks up to limit available rows, in one
// round trip. With no rows it returns an empty claim that holds nothing.
// Payloads are bounded by maxBytes: the claim asks for fewer rows when
// recent rows were large (see rowLimit), and rows past the bound come back
// deferred, without their payload.
//
// The transaction is driven by hand rather than with pgx.Tx so that BEGIN,
// the claim and later the settle and COMMIT share round trips. After a
// failed round trip the connection is closed (see discard).
func (s *pgStore) Claim(ctx context.Context, limit int) (*claim, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	b := &pgx.Batch{}
	cl := s.queueClaim(b, limit)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		discard(conn)
		if errors.Is(err, errSchemaChanged) {
			return s.Claim(ctx, limit) // with the columns now: no further check
		}
		return nil, fmt.Errorf("claim: %w", err)
	}
	return s.hold(ctx, conn, cl)
}

// claiming is a claim queued in a batch: the rows once it has run, how
// many it asked for, and the payload bytes of all of them, loaded or not.
type claiming struct {
	at    time.Time
	rows  []Row
	asked int
	bytes int64
	// snapshot is the claim's snapshot, read with its rows, as
	// pg_current_snapshot() prints it.
	snapshot string
}

// queueClaim queues BEGIN, the promotion of due rows and the claim of up to
// limit rows (fewer, see rowLimit), and returns where the claimed rows will
// be.
func (s *pgStore) queueClaim(b *pgx.Batch, limit int) *claiming {
	limit = s.rowLimit(limit)
	now := time.Now()
	b.Queue("begin")
	if !now.Before(s.promoteAfter) {
		b.Queue(s.promoteSQL, limit).Exec(func(ct pgconn.CommandTag) error {
			s.promoted(now, ct.RowsAffected())
			return nil
		})
	}
	// Room for as many rows as the last claim took: a claim of a row or
	// two while rows come sparsely would otherwise allocate a batch of
	// empty rows (120 KiB for 500), and at a thousand claims a second the
	// collector ran a third of the relay's CPU time.
	cl := &claiming{at: now, rows: make([]Row, 0, min(limit, max(s.lastRows, 4))), asked: limit}
	budget, largest := cmp.Or(s.maxBytes, math.MaxInt64), cmp.Or(s.maxRowBytes, math.MaxInt64)
	b.Queue(s.claimSQL, s.claimArgs(limit, budget, largest)...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var r Row
			var loaded bool
			var expiresMS *int64
			if err := rows.Scan(&r.ID, &r.Exchange, &r.RoutingKey, &r.PartitionKey, &r.MessageID,
				&r.ContentType, &r.Headers, &r.Payload, &r.size, &r.CreatedAt, &r.Attempts, &loaded,
				&r.Type, &r.CorrelationID, &r.ReplyTo, &r.Priority, &r.ContentEncoding, &r.AppID, &expiresMS, &cl.snapshot); err != nil {
				return fmt.Errorf("scan row: %w", err)
			}
			r.deferred = !loaded
			if expiresMS != nil {
				r.ExpiresAt = now.Add(time.Duration(*expiresMS) * time.Millisecond)
			}
			cl.rows = append(cl.rows, r)
			cl.bytes += int64(r.size)
		}
		return rows.Err()
	})
	if !s.props {
		s.queuePropertiesCheck(b)
	}
	return cl
}

// promoteEvery is how long claims go without promoting due rows after a
// promotion found none: promoteSQL costs about a third of a claim that
// finds a row or two, and rows rarely wait in delayed_idx. A delayed or
// backing-off row that falls due while the relay is busy waits that much
// longer at most; one that falls due while it sleeps waits for the poll
// (PollInterval) as before. Rows revived by RetryDead skip delayed_idx.
const promoteEvery = 50 * time.Millisecond

// promoted records that the promotion queued at now moved n rows: with
// none, the claims skip it for promoteEvery; with some, the next claim
// promotes again (more may be due than it took).
func (s *pgStore) promoted(now time.Time, n int64) {
	s.promoteAfter = time.Time{}
	if n == 0 {
		s.promoteAfter = now.Add(promoteEvery)
	}
}

// rowLimit returns how many rows a claim asks for: limit, or fewer when
// the recent rows' payloads make limit of them larger than maxBytes. Rows
// past maxBytes would be locked and sent later; asking for about as many
// as fit keeps a claim of large rows from locking a whole batch of them
// to send a few.
func (s *pgStore) rowLimit(limit int) int {
	if s.maxBytes <= 0 || s.rowBytes <= 0 {
		return limit
	}
	n := float64(s.maxBytes) / s.rowBytes
	if n >= float64(limit) {
		return limit
	}
	return max(1, int(n))
}

// hold makes a claim of the rows of cl, whose transaction is open on conn.
// With no rows it ends the transaction and gives conn back instead.
func (s *pgStore) hold(ctx context.Context, conn *pgxpool.Conn, cl *claiming) (*claim, error) {
	rows := cl.rows
	s.lastRows = len(rows)
	if len(rows) == 0 {
		// Nothing claimed: end the transaction now rather than hold it,
		// keeping what the promotion moved.
		if _, err := conn.Exec(ctx, "commit"); err != nil {
			discard(conn)
			return nil, fmt.Errorf("claim: end empty transaction: %w", err)
		}
		conn.Release()
		return &claim{}, nil
	}
	// The estimate moves halfway to what this claim saw, so it follows a
	// change of row sizes within a few claims without swinging with each.
	avg := float64(cl.bytes) / float64(len(rows))
	if s.rowBytes == 0 {
		s.rowBytes = avg
	} else {
		s.rowBytes = (s.rowBytes + avg) / 2
	}
	c := &claim{conn: conn, rows: rows, at: cl.at, snapshot: cl.snapshot}
	for i := range rows {
		if !rows[i].deferred {
			c.loaded++
		}
	}
	c.full = len(rows) >= cl.asked || c.deferred()
	s.live[c] = struct{}{}
	return c, nil
}

// claimArgs returns the arguments of claimSQL (see claimQuery).
func (s *pgStore) claimArgs(limit int, budget, largest int64) []any {
	inflight := make([]int64, len(s.owned))
	for i, p := range s.owned {
		inflight[i] = s.table.PartitionLockKey("inflight", p)
	}
	args := []any{limit, s.owner, sessionLockKey(s.table, s.owner), s.heldIDs(), budget, largest, inflight}
	if !s.recorded {
		return append(args, s.table.Derived("settings"))
	}
	var owned []int32 // null: every partition (nil owned: unchecked, as pid 0)
	if s.owned != nil && len(s.owned) < s.partitions {
		owned = int32s(s.owned)
	}
	return append(args, s.partitions, owned)
}

// heldIDs returns the ids of the rows of live claims. Claims are not made
// while another claim of this store is being settled: a row released by a
// commit after this list is read would be passed over while a later row of
// its key is taken.
func (s *pgStore) heldIDs() []int64 {
	ids := []int64{}
	for c := range s.live {
		for i := range c.rows {
			ids = append(ids, c.rows[i].ID)
		}
	}
	return ids
}
