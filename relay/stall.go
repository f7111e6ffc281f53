package relay

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/schema"
)

// stallAfter is how long a leader may go without claiming a row while a
// row it could claim has waited that long, before it says it is stalled.
const stallAfter = 10 * time.Second

// progress is what the loop tells the gauge refresher and the liveness
// probe about its work, so that a leader that claims nothing while rows
// wait says so (whatever the cause: a pooler, a lock held elsewhere, a
// bug, no stall stays silent), and a loop that stopped moving fails
// /healthz. The loop writes it; the refresher and the probes only read.
type progress struct {
	lastStep    atomic.Int64 // unix ns the last step of the loop ended (or Run began)
	leaderSince atomic.Int64 // unix ns; 0 while not leader
	leaderPID   atomic.Int32 // the leader lock's session while leader, else 0
	draining    atomic.Bool  // a batch is in flight: the confirm timeout bounds it
	noBroker    atomic.Bool  // no broker connection, or publishing blocked: logged as such
	lastRows    atomic.Int64 // unix ns of the last claim that returned rows
	lastClaim   atomic.Int64 // unix ns of the last claim
	lastClaimN  atomic.Int64 // rows it returned
	// owned is the partitions the loop claims for, nil while it owns none
	// (see setOwned): the gauges' owned lag and the stall check look at
	// those partitions only.
	owned atomic.Pointer[ownership]
	// partitions is the table's P as the loop last looked it up, 0 before
	// its first look: the gauges report it without reading it again.
	partitions atomic.Int32
	// blocked reports whether the broker blocks publishing (the
	// publisher's Blocked); set by Run before the loop starts.
	blocked atomic.Pointer[func() bool]
}

// stepDone records that the loop completed a step (or, at the start of
// Run, that it is about to take its first).
func (p *progress) stepDone() { p.lastStep.Store(time.Now().UnixNano()) }

// stuck says why the loop counts as stuck at now, or "" if it does not: no
// step ended and no claim was made for longer than bound, except while a
// batch waits for confirms of a broker that blocks publishing (a resource
// alarm: the confirm timeout does not run then either).
func (p *progress) stuck(now time.Time, bound time.Duration) string {
	idle := now.Sub(time.Unix(0, max(p.lastStep.Load(), p.lastClaim.Load())))
	if idle <= bound {
		return ""
	}
	where := "connecting, leading or waiting"
	if p.draining.Load() {
		if f := p.blocked.Load(); f != nil && (*f)() {
			return ""
		}
		where = "draining: claim, publish or settle"
	}
	return fmt.Sprintf("relay loop made no progress for %s while %s (bound %s)", idle.Round(time.Millisecond), where, bound)
}

func (p *progress) claimed(n int) {
	now := time.Now().UnixNano()
	p.lastClaim.Store(now)
	p.lastClaimN.Store(int64(n))
	if n > 0 {
		p.lastRows.Store(now)
	}
}

// ownership is the partitions a relay owns and claims for, of the table's
// P as the loop has it.
type ownership struct {
	owned      []int // ascending
	partitions int
}

// all reports whether o covers every partition of the table.
func (o *ownership) all() bool { return len(o.owned) >= o.partitions }

// setOwned records the partitions the loop claims for (owned, ascending)
// and the table's number of partitions as the loop has it; none (nil or
// empty) is owning nothing. The loop calls it whenever its partitions
// change; losing leadership (setLeader(0)) clears them too.
func (p *progress) setOwned(owned []int, partitions int) {
	if len(owned) == 0 {
		p.owned.Store(nil)
		return
	}
	p.owned.Store(&ownership{owned: slices.Clone(owned), partitions: partitions})
}

// setLeader records leadership gained (pid: the leader lock's session) or
// lost (0), which also clears the partitions owned.
func (p *progress) setLeader(pid int32) {
	p.leaderPID.Store(pid)
	if pid == 0 {
		p.leaderSince.Store(0)
		p.owned.Store(nil)
		return
	}
	now := time.Now().UnixNano()
	p.leaderSince.Store(now)
	p.lastRows.Store(now)
	p.lastStep.Store(now) // after the fence, the longest wait of a step
}

func since(unixNano int64) time.Duration { return time.Since(time.Unix(0, unixNano)) }

// stallQuery finds the first row a claim could take, without locking it:
// the claim's filters, bar the row locks and the leader check. It also
// says which backend holds the lock $1, $2 (see lockParts): the lock of the
// relay's first partition. filter narrows the rows further (see
// ownedFilter), or is "".
func stallQuery(table, filter string) string {
	return `select o.id, extract(epoch from now() - o.created_at)::float8,
       (select l.pid from pg_locks l where ` + heldLock("l", "$1", "$2") + ` limit 1)
  from ` + table + ` o
 where dead_at is null
   and available_at = created_at
   and ` + keyFree(table, "o") + filter + `
 order by id
 limit 1`
}

// ownedFilter narrows the rows of table t aliased alias to the partitions
// listed in the parameter owned (integer[]) of partitions (the table's P,
// integer), as the claim does: only for a table that records P.
func ownedFilter(t schema.Table, alias, partitions, owned string) string {
	return `
   and ` + inPartitions(t, alias, partitions, owned)
}

// inPartitions is the condition that the row aliased alias of table t maps,
// of the table's partitions (the parameter partitions), to one of those
// listed in the integer[] parameter owned (see migration 007).
func inPartitions(t schema.Table, alias, partitions, owned string) string {
	return t.Derived("partition") + `(` + alias + `.partition_key, ` + alias + `.id, ` + partitions + `::integer) = any(` + owned + `::integer[])`
}

// checkStall runs after a gauge refresh that found the lag of the rows the
// relay may claim at lag: those of the partitions it owns, o (nil: the
// loop did not say, so the whole table). On a leader that has claimed no
// row for stallAfter while not in a batch nor without a broker (which has
// its own logs and metrics), with rows that old waiting, it asks the
// database whether a row it could claim exists (in its partitions, when it
// owns fewer than the table's) and, if one does, sets outbox_stalled and
// warns (once per stall) with what it knows.
func (r *Relay) checkStall(ctx context.Context, pool *pgxpool.Pool, q gaugeQueries, lis func() int32,
	p *progress, o *ownership, lag float64, warned *bool) error {
	stalled := false
	defer func() {
		r.metrics.stalled.Set(b2f(stalled))
		if !stalled && *warned {
			r.log.Info("leader claims rows again")
			*warned = false
		}
	}()
	ls := p.leaderSince.Load()
	if ls == 0 || p.draining.Load() || p.noBroker.Load() || lag < stallAfter.Seconds() ||
		since(ls) < stallAfter || since(p.lastRows.Load()) < stallAfter {
		return nil
	}
	key, sql := q.leaderKey, q.stall
	var parts []any
	if o != nil {
		key = q.table.PartitionLockKey("leader", o.owned[0])
		if !o.all() {
			sql, parts = q.stallOwned, []any{o.partitions, int32s(o.owned)}
		}
	}
	classid, objid := lockParts(key)
	var id int64
	var age float64
	var holder *int32
	err := pool.QueryRow(ctx, sql, append([]any{classid, objid}, parts...)...).Scan(&id, &age, &holder)
	switch {
	case err == pgx.ErrNoRows:
		return nil
	case err != nil:
		return fmt.Errorf("check for a stall: %w", err)
	case age < stallAfter.Seconds():
		return nil
	}
	stalled = true
	if *warned {
		return nil
	}
	*warned = true
	holderAttr := slog.String("leader_lock_pid", "none")
	if holder != nil {
		holderAttr = slog.Int("leader_lock_pid", int(*holder))
	}
	attrs := []any{slog.Int64("id", id), slog.Duration("oldest_age", time.Duration(age*float64(time.Second))),
		holderAttr, slog.Int("listener_pid", int(lis())),
		slog.Duration("last_rows_claimed_ago", since(p.lastRows.Load()).Round(time.Millisecond)),
		slog.Duration("last_claim_ago", since(p.lastClaim.Load()).Round(time.Millisecond)),
		slog.Int64("last_claim_rows", p.lastClaimN.Load())}
	if parts != nil {
		attrs = append(attrs, slog.Any("partitions", o.owned), slog.Int("of", o.partitions))
	}
	r.log.Warn("leader claims no rows although rows are available", append(attrs,
		slog.String("hint", "rows locked by another session (a deposed leader's batch), or the leader lock held by "+
			"another backend than the relay's LISTEN session (a pooler)"))...)
	return nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// acquireWarnAfter is how long getting a database connection from the
// relay's pool may take before the relay says it waits.
const acquireWarnAfter = time.Second

// acquireTracer makes slow connection acquisitions visible: a session-mode
// pooler whose pool is full, or a server at max_connections, otherwise
// leaves the relay waiting without a word.
type acquireTracer struct {
	log     *slog.Logger
	metrics *metrics
}

type acquireKey struct{}

type acquireWait struct {
	begin  time.Time
	timer  *time.Timer
	warned chan struct{} // closed once the warning is logged
}

// TraceQueryStart implements pgx.QueryTracer; it does nothing.
func (acquireTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

// TraceQueryEnd implements pgx.QueryTracer; it does nothing.
func (acquireTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TraceAcquireStart implements pgxpool.AcquireTracer.
func (t acquireTracer) TraceAcquireStart(ctx context.Context, pool *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	w := t.watch(func() []any {
		st := pool.Stat()
		cause := "all of the relay's connections are busy"
		if st.TotalConns() < st.MaxConns() {
			cause = "opening a connection is slow: a session pooler whose pool is full waits for a free server connection"
		}
		return []any{slog.Int("open", int(st.TotalConns())), slog.Int("max", int(st.MaxConns())), slog.String("cause", cause)}
	})
	return context.WithValue(ctx, acquireKey{}, w)
}

// TraceAcquireEnd implements pgxpool.AcquireTracer.
func (t acquireTracer) TraceAcquireEnd(ctx context.Context, _ *pgxpool.Pool, data pgxpool.TraceAcquireEndData) {
	if w, ok := ctx.Value(acquireKey{}).(*acquireWait); ok {
		t.done(w, data.Err)
	}
}

// watch starts timing a wait for a database connection: past
// acquireWarnAfter it is logged, with attrs, and counted.
func (t acquireTracer) watch(attrs func() []any) *acquireWait {
	w := &acquireWait{begin: time.Now(), warned: make(chan struct{})}
	w.timer = time.AfterFunc(acquireWarnAfter, func() {
		defer close(w.warned)
		t.metrics.acquireWaits.Inc()
		t.log.Warn("waiting for a database connection", append([]any{slog.Duration("waited", acquireWarnAfter)}, attrs()...)...)
	})
	return w
}

// done ends a wait started with watch.
func (t acquireTracer) done(w *acquireWait, err error) {
	if w.timer.Stop() {
		return // never warned
	}
	<-w.warned // the warning comes first
	if err == nil {
		t.log.Info("database connection acquired", slog.Duration("waited", time.Since(w.begin).Round(time.Millisecond)))
	}
}
