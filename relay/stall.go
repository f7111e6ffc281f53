package relay

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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

// setLeader records leadership gained (pid: the leader lock's session) or
// lost (0).
func (p *progress) setLeader(pid int32) {
	p.leaderPID.Store(pid)
	if pid == 0 {
		p.leaderSince.Store(0)
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
// says which backend holds the leader lock.
func stallQuery(table string) string {
	return `select o.id, extract(epoch from now() - o.created_at)::float8,
       (select l.pid from pg_locks l where ` + heldLock("l", "$1", "$2") + ` limit 1)
  from ` + table + ` o
 where dead_at is null
   and available_at = created_at
   and ` + keyFree(table, "o") + `
 order by id
 limit 1`
}

// checkStall runs after a gauge refresh that found the lag at lag. On a
// leader that has claimed no row for stallAfter while not in a batch nor
// without a broker (which has its own logs and metrics), with
// rows that old waiting, it asks the database whether a claimable row
// exists and, if one does, sets outbox_stalled and warns (once per stall)
// with what it knows.
func (r *Relay) checkStall(ctx context.Context, pool *pgxpool.Pool, q string, leaderKey int64, lis func() int32,
	p *progress, lag float64, warned *bool) error {
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
	classid, objid := lockParts(leaderKey)
	var id int64
	var age float64
	var holder *int32
	err := pool.QueryRow(ctx, q, classid, objid).Scan(&id, &age, &holder)
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
	r.log.Warn("leader claims no rows although rows are available",
		slog.Int64("id", id), slog.Duration("oldest_age", time.Duration(age*float64(time.Second))),
		holderAttr, slog.Int("listener_pid", int(lis())),
		slog.Duration("last_rows_claimed_ago", since(p.lastRows.Load()).Round(time.Millisecond)),
		slog.Duration("last_claim_ago", since(p.lastClaim.Load()).Round(time.Millisecond)),
		slog.Int64("last_claim_rows", p.lastClaimN.Load()),
		slog.String("hint", "rows locked by another session (a deposed leader's batch), or the leader lock held by "+
			"another backend than the relay's LISTEN session (a pooler)"))
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
