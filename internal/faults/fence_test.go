//go:build faults

package faults

import (
	"fmt"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// wireDelay holds back what the deposed leader sends to the broker: its
// batches on the wire arrive this late, within its OUTBOX_CONFIRM_TIMEOUT
// (5s), so they are confirmed and settled rather than abandoned.
const wireDelay = 3 * time.Second

// TestFailoverWithBatchOnTheWire is the failover that reordered keys before
// the handoff fence: the leader's broker connection is slowed while its
// batches are on the wire, and its lock session alone is terminated. The
// standby takes the lead within a second, while the old leader's batches
// are still to arrive; it must not publish a later row of their keys
// before they are settled. Each relay reaches the broker through a proxy
// of its own; the leader's turns slow, three times, the roles swapping.
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
		name := fmt.Sprintf("slow_%d", round)
		addToxic(t, leader.wire, name, "latency", "upstream", fmt.Sprintf(`{"latency": %d}`, wireDelay.Milliseconds()))
		s.terminateLockSession(leader.p)
		struck, from := time.Now(), s.cons.mark()
		led := harness.WaitFor(t, recoverTimeout, standby.p.name+" to lead", standby.p.isLeader)
		t.Logf("round %d: %s leads %s after %s lost its lock session with batches on a slow wire",
			round+1, standby.p.name, led.Sub(struck).Round(time.Millisecond), leader.p.name)
		time.Sleep(wireDelay) // the deposed leader's batches arrive meanwhile
		removeToxic(t, leader.wire, name)
		s.recovered(fmt.Sprintf("round %d: failover with batches on the wire", round+1), struck, from)
	}
	s.finish(0)
}
