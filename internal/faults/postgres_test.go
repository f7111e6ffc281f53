//go:build faults

package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// TestPostgresTerminatesRelaySessions terminates every PostgreSQL session
// of the relay (the LISTEN connection holding the leader lock and the pool's
// connections, perhaps in the middle of a claim or a settle) five times
// under load.
func TestPostgresTerminatesRelaySessions(t *testing.T) {
	s := newScenario(t, "pg_terminate_backend")
	s.startLoad()
	r := s.startRelay(nil)
	s.waitFlowing("relay")
	const rounds = 5
	for i := range rounds {
		time.Sleep(faultSpacing) // spaces the faults
		s.backlog(burst)
		time.Sleep(rand.N(killWithin)) // a random moment of the burst
		killed, from := time.Now(), s.cons.mark()
		n := s.terminateSessions(r)
		if n < 2 {
			t.Errorf("round %d: terminated %d sessions of the relay; want its listener and at least one pool connection", i+1, n)
		}
		s.recovered(fmt.Sprintf("pg_terminate_backend of %d relay sessions (%d)", n, i+1), killed, from)
	}
	// A busy relay notices a dead listener only when it next waits.
	var n float64
	if !harness.Within(10*time.Second, func() bool {
		n, _ = r.Metric(`outbox_reconnects_total{connection="postgres_listener"}`)
		return n >= rounds
	}) {
		t.Errorf("outbox_reconnects_total{connection=\"postgres_listener\"} = %v after %d rounds", n, rounds)
	}
	s.finish(0)
}

// terminateSessions terminates the backends whose client ports are the
// relay's sockets to PostgreSQL, and returns how many it terminated.
func (s *scenario) terminateSessions(r *relayProc) int {
	s.t.Helper()
	ports, err := r.LocalPorts(dbPort(s.t))
	if err != nil {
		s.t.Fatal(err)
	}
	var n int
	err = s.env.Pool.QueryRow(context.Background(), `select count(*) filter (where pg_terminate_backend(pid))
  from pg_stat_activity
 where client_port = any($1) and backend_type = 'client backend' and pid <> pg_backend_pid()`, ports).Scan(&n)
	if err != nil {
		s.t.Fatalf("terminate relay sessions: %v", err)
	}
	return n
}

// lockBacklog keeps the leader busy, its batches full, for several seconds
// after it loses its lock.
const lockBacklog = 40000

// After its lock session dies, the leader may still settle what it has on
// the wire, and must notice within lockLostWatch. splitWindow is how long
// the test watches both relays once one of them leads again.
const (
	lockLostWatch = time.Second
	splitWindow   = 2 * time.Second
)

// TestLeaderLockLostWhileBusy terminates the leader's LISTEN session, which
// holds the leader lock, while the leader works through a backlog, then
// starts a second relay. A relay that no
// longer holds the lock must stop publishing (DESIGN.md guarantee 5: relays
// never publish concurrently in steady state); if it goes on, the two
// publish rows of the same partition keys side by side and the consumer
// sees them out of order (README guarantee 4).
func TestLeaderLockLostWhileBusy(t *testing.T) {
	s := newScenario(t, "leader_lock_lost_busy")
	s.startLoad()
	a := s.startRelay(nil)
	harness.WaitFor(t, startTimeout, "relay-1 to lead", a.isLeader)
	s.waitFlowing("leader")

	s.backlog(lockBacklog)
	if !s.busy(lockBacklog / 2) {
		t.Fatalf("the leader drained half the backlog before the fault; raise lockBacklog")
	}
	s.terminateLockSession(a)
	lost, from := time.Now(), s.cons.mark()
	// relay-1 must notice at its next claim, not when the backlog is gone.
	harness.WaitFor(t, lockLostWatch, "relay-1 to notice that it lost the leader lock", func() bool {
		_, ok := a.Output().FirstLineTime("leadership lost")
		return ok
	})
	at, _ := a.Output().FirstLineTime("leadership lost")
	t.Logf("relay-1 logged %q %s after its lock session was terminated", "leadership lost", at.Sub(lost).Round(time.Millisecond))

	// The lock is free again: relay-1 may take it back, or relay-2 may.
	// Either way exactly one leads, and the other publishes nothing.
	b := s.startRelay(nil)
	harness.WaitFor(t, recoverTimeout, "exactly one relay to lead", func() bool { return a.isLeader() != b.isLeader() })
	leader, standby := a, b
	if b.isLeader() {
		leader, standby = b, a
	}
	atStandby := standby.published()
	time.Sleep(splitWindow) // both relays run
	// A relay that just lost the lead may still settle the two batches it
	// had on the wire (OUTBOX_BATCH_SIZE 200), no more.
	if n := standby.published() - atStandby; n > 400 && leader.isLeader() {
		t.Errorf("split brain: the standby published %v rows while the other relay led", n)
	}
	s.recovered("leader lock lost under load", lost, from)
	s.finish(0)
}

// terminateLockSession terminates the session in which relay r holds its
// partition locks (its LISTEN session, which every relay's holds the
// table's relays lock in), and only that one.
func (s *scenario) terminateLockSession(r *relayProc) {
	t := s.t
	t.Helper()
	// The relays lock, not the "in flight" locks its claims hold.
	pid := s.lockHolder(r, s.env.Table.LockKey("relays"))
	if pid == 0 {
		t.Fatalf("find %s's LISTEN session: it holds no relays lock", r.name)
	}
	var ok bool
	if err := s.env.Pool.QueryRow(context.Background(), "select pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("terminate %s's lock session %d: %v", r.name, pid, err)
	}
}

// holdsPartition reports whether one of r's sessions holds partition p's
// lock: r owns p, or has taken it and waits at the fence.
func (s *scenario) holdsPartition(r *relayProc, p int) bool {
	return s.lockHolder(r, s.env.Table.PartitionLockKey("leader", p)) != 0
}

// lockHolder returns the backend pid of the session of relay r that holds
// the session advisory lock key, 0 if none does.
func (s *scenario) lockHolder(r *relayProc, key int64) int32 {
	t := s.t
	t.Helper()
	ports, err := r.LocalPorts(dbPort(t))
	if err != nil {
		t.Fatal(err)
	}
	k := uint64(key)
	var pid int32
	err = s.env.Pool.QueryRow(context.Background(), `select coalesce((select l.pid
  from pg_locks l join pg_stat_activity a on a.pid = l.pid
 where l.locktype = 'advisory' and l.granted and a.client_port = any($1)
   and l.classid = $2::bigint::oid and l.objid = $3::bigint::oid and l.objsubid = 1
 limit 1), 0)`, ports, int64(k>>32), int64(k&0xffffffff)).Scan(&pid)
	if err != nil {
		t.Fatalf("look up %s's session holding lock %d: %v", r.name, key, err)
	}
	return pid
}
