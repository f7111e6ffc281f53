//go:build faults

package faults

import (
	"fmt"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// freezeHold is how long the deposed owner's broker connection stays
// frozen (a stopped proxy): its batches on the wire and their confirms are
// held, then arrive. It is within its OUTBOX_CONFIRM_TIMEOUT (5s), so
// those batches are confirmed and settled rather than abandoned, and
// longer than a takeover (within 2s), so another relay has taken their
// partitions' locks by then and waits at the fence. (Held past the confirm
// timeout, the batches would be abandoned and published again, and their
// first copies would reach the broker late, out of order: the case the
// guarantee leaves out, see docs/how-it-works.md "Failover and order".)
const freezeHold = 3 * time.Second

// TestFailoverWithBatchOnTheWire is the failover that reordered keys before
// the handoff fence: the leader's broker connection stalls (its proxy
// frozen) while its batches are on the wire, and its lock session alone is
// terminated. The standby takes the lock within a second and waits at the
// fence while the old leader's batches are held: it must not lead before
// the stall is released, nor publish a later row of their keys before they
// are settled. Each relay reaches the broker through a proxy of its own;
// the leader's freezes, three times, the roles swapping.
func TestFailoverWithBatchOnTheWire(t *testing.T) {
	s := newScenario(t, "failover_batch_on_wire")
	s.startLoad()
	type relay struct {
		p    *relayProc
		wire *toxiproxy.Proxy
	}
	var relays [2]relay
	for i := range relays {
		wire, env := proxyTo(t, "broker")
		relays[i] = relay{p: s.startRelay(env), wire: wire}
		harness.WaitFor(t, startTimeout, relays[i].p.name+" to be connected", relays[i].p.Connected)
	}
	s.waitFlowing("leader")
	for round := range 3 {
		var leader, standby relay
		harness.WaitFor(t, recoverTimeout, "exactly one relay to lead", func() bool {
			return relays[0].p.isLeader() != relays[1].p.isLeader()
		})
		leader, standby = relays[0], relays[1]
		if standby.p.isLeader() {
			leader, standby = standby, leader
		}
		s.backlog(lockBacklog)
		if !s.busy(lockBacklog / 2) {
			t.Fatalf("the leader drained half the backlog before the fault; raise lockBacklog")
		}
		frozen := time.Now()
		freeze(t, leader.wire)
		s.terminateLockSession(leader.p)
		struck, from := time.Now(), s.cons.mark()
		// While the stall holds, the standby takes the lock and waits at
		// the fence: it must not lead.
		locked := false
		for left := freezeHold; left > 0; left = freezeHold - time.Since(frozen) {
			if standby.p.isLeader() {
				t.Fatalf("round %d: %s led while the stall held: no batch was on the wire, or the fence let it pass", round+1, standby.p.name)
			}
			locked = locked || s.holdsPartition(standby.p, 0)
			time.Sleep(min(left, 100*time.Millisecond))
		}
		if !locked {
			t.Fatalf("round %d: %s did not take the lock within %s: the fence was not put to the test", round+1, standby.p.name, freezeHold)
		}
		thaw(t, leader.wire) // the deposed leader's batches arrive now
		led := harness.WaitFor(t, recoverTimeout, standby.p.name+" to lead", standby.p.isLeader)
		t.Logf("round %d: %s leads %s after %s lost its lock session with batches on a wire frozen for %s",
			round+1, standby.p.name, led.Sub(struck).Round(time.Millisecond), leader.p.name, freezeHold)
		s.recovered(fmt.Sprintf("round %d: failover with batches on a frozen wire", round+1), struck, from)
	}
	s.finish(0)
}
