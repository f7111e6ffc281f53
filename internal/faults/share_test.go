//go:build faults

package faults

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// sharedPartitions is P of the shared table: the default.
const sharedPartitions = schema.DefaultPartitions

// maxRegain is how long a stopped or killed relay's partitions may stay
// without an owner (the issue: within 2 s).
const maxRegain = 2 * time.Second

// brokerGoneHold outlasts the relay's brokerGone (10 s): a relay without
// a broker connection that long gives its partitions to the others.
const brokerGoneHold = 12 * time.Second

// sharedRelay is one relay of the shared table, with the proxies it goes
// through (nil where it connects directly).
type sharedRelay struct {
	p        *relayProc
	wire, db *toxiproxy.Proxy
}

// TestSharedTable runs three relays on one table of 12 partitions under
// load and, one after another: kills one with SIGKILL and starts another;
// stops one with SIGTERM and starts another; stalls one's broker
// connection (its proxy frozen) while its batches are on the wire and
// terminates its lock session alone, then releases the stall; cuts one off from
// PostgreSQL; restarts all three in turn; and cuts one off from the broker
// past brokerGone. Every committed row must arrive, in order per key.
// Rows of the partitions of the relay without a broker wait until it gives
// them up (brokerGone): the scenario's max_latency shows it.
func TestSharedTable(t *testing.T) {
	s := newScenario(t, "shared_table")
	if _, err := schema.SetPartitions(context.Background(), testenv.Conn(t), s.env.Table, sharedPartitions, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	s.startLoad()
	start := func(viaDB bool) *sharedRelay {
		wire, env := proxyTo(t, "broker")
		r := &sharedRelay{wire: wire}
		if viaDB {
			db, denv := proxyTo(t, "postgres")
			maps.Copy(env, denv)
			r.db = db
		}
		r.p = s.startRelay(env)
		return r
	}
	relays := []*sharedRelay{start(false), start(false), start(true)}
	s.waitShared(relays, "three relays to share the partitions")
	s.waitFlowing("three relays")
	// Every relay publishes its share: a burst spreads over every
	// partition (rows without a key by their id).
	s.backlog(burst)
	s.waitFor(recoverTimeout, "every relay to publish part of the load", func() bool {
		for _, r := range relays {
			if r.p.published() == 0 {
				return false
			}
		}
		return true
	})

	// A relay killed: the others own its partitions within maxRegain.
	s.backlog(burst)
	relays[0].p.Kill()
	killed, from := time.Now(), s.cons.mark()
	s.waitShared(relays[1:], "the survivors to own the killed relay's partitions")
	if d := time.Since(killed); d > maxRegain {
		t.Errorf("the killed relay's partitions were owned again after %s, want within %s", d.Round(time.Millisecond), maxRegain)
	}
	s.recovered("shared: SIGKILL of one of three", killed, from)
	relays[0] = start(false)
	s.waitShared(relays, "a restarted relay to get its share")

	// A relay stopped: it hands its partitions over as it goes.
	s.backlog(burst)
	if code, exited := relays[1].p.terminate(15 * time.Second); !exited || code != 0 {
		t.Fatalf("SIGTERM: exited %t, code %d", exited, code)
	}
	stopped, from := time.Now(), s.cons.mark()
	s.waitShared([]*sharedRelay{relays[0], relays[2]}, "the others to own the stopped relay's partitions")
	s.recovered("shared: SIGTERM of one of three", stopped, from)
	relays[1] = start(false)
	s.waitShared(relays, "a restarted relay to get its share")

	// A relay's broker connection stalls (its proxy frozen) while its
	// batches are on the wire, and its lock session is terminated: the
	// others fence its partitions until those batches, released, are
	// settled.
	s.backlog(lockBacklog / 4)
	freeze(t, relays[1].wire)
	s.terminateLockSession(relays[1].p)
	struck, from := time.Now(), s.cons.mark()
	time.Sleep(freezeHold)
	thaw(t, relays[1].wire)
	s.waitShared(relays, "the relay whose lock session was terminated to get its share again")
	s.recovered("shared: lock session terminated with batches on a frozen wire", struck, from)

	// A relay cut off from PostgreSQL.
	s.backlog(burst)
	relays[2].db.Stop()
	time.Sleep(cutHold)
	if err := relays[2].db.Start(); err != nil {
		t.Fatalf("restart proxy: %v", err)
	}
	healed, from := time.Now(), s.cons.mark()
	s.waitShared(relays, "the relay cut from PostgreSQL to get its share again")
	s.recovered("shared: one relay cut from PostgreSQL", healed, from)

	// A rolling restart.
	for i := range relays {
		s.backlog(burst)
		if _, exited := relays[i].p.terminate(15 * time.Second); !exited {
			t.Fatalf("%s did not stop on SIGTERM", relays[i].p.name)
		}
		relays[i] = start(i == 2)
		s.waitShared(relays, "the group to share again after a restart")
	}
	restarted, from := time.Now(), s.cons.mark()
	s.recovered("shared: rolling restart of three", restarted, from)

	// One relay's broker gone past brokerGone: it gives its partitions
	// up and gets them back once the broker is back.
	s.backlog(burst)
	relays[0].wire.Stop()
	s.waitOwnedBy(relays[1:], sharedPartitions, brokerGoneHold+5*time.Second, "the others to own the partitions of the relay without a broker")
	if err := relays[0].wire.Start(); err != nil {
		t.Fatalf("restart proxy: %v", err)
	}
	back, from := time.Now(), s.cons.mark()
	s.waitShared(relays, "the relay whose broker came back to get its share")
	s.recovered("shared: one relay's broker gone", back, from)
	s.finish(0)
}

// waitShared waits until the running relays among relays own every
// partition between them, each its fair share.
func (s *scenario) waitShared(relays []*sharedRelay, what string) {
	s.t.Helper()
	s.waitOwnedBy(relays, sharedPartitions, recoverTimeout, what)
}

// waitOwnedBy waits until relays own p partitions between them, in fair
// shares.
func (s *scenario) waitOwnedBy(relays []*sharedRelay, p int, timeout time.Duration, what string) {
	s.t.Helper()
	s.waitFor(timeout, what, func() bool {
		var owned []int
		for _, r := range relays {
			if r.p.Exited() {
				return false
			}
			n, ok := r.p.Metric("outbox_partitions_owned")
			if !ok {
				return false
			}
			owned = append(owned, int(n))
		}
		slices.Sort(owned)
		slices.Reverse(owned)
		return slices.Equal(owned, relay.Shares(p, len(relays)))
	})
}
