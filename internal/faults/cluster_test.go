//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// The RabbitMQ cluster of three nodes that .ci/services starts beside the
// default broker, which is not part of it.
var (
	clusterNodes = []string{"outbox-c1@localhost", "outbox-c2@localhost", "outbox-c3@localhost"}
	clusterURLs  = []string{
		"amqp://guest:guest@127.0.0.1:5681/",
		"amqp://guest:guest@127.0.0.1:5682/",
		"amqp://guest:guest@127.0.0.1:5683/",
	}
)

// nodeOutage is how long a cluster node's application stays stopped.
const nodeOutage = 4 * time.Second

// TestClusterNodeStopped runs three relays on one table of 12 partitions,
// each given the three nodes of a RabbitMQ cluster (each starts on a node
// of its own), publishing to a quorum queue, and stops each node in turn
// for nodeOutage under load. The relays and the consumer on the stopped
// node move on to another; every committed row must arrive, in order per
// key.
func TestClusterNodeStopped(t *testing.T) {
	ctx := context.Background()
	for i, n := range clusterNodes {
		if _, err := harness.Rabbitmqctl(ctx, "-n", n, "await_startup", "--timeout", "10"); err != nil {
			t.Fatalf("cluster node %s (%s) is not running: start the cluster with `bash .ci/services`\n%v", n, clusterURLs[i], err)
		}
	}
	s := newScenarioWith(t, "cluster_node_stopped", testenv.New(t), clusterURLs, amqp.Table{"x-queue-type": "quorum"})
	// Registered after the topology, so it runs before its removal.
	t.Cleanup(func() {
		for _, n := range clusterNodes {
			if err := startNode(context.Background(), n); err != nil {
				t.Errorf("restore cluster node %s: %v", n, err)
			}
		}
	})
	if _, err := schema.SetPartitions(ctx, testenv.Conn(t), s.env.Table, sharedPartitions, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	s.waitQuorumMembers()
	s.startLoad()
	var relays []*sharedRelay
	for range 3 {
		relays = append(relays, &sharedRelay{p: s.startRelay(nil)})
	}
	s.waitShared(relays, "three relays to share the partitions")
	s.waitFlowing("three relays")

	for i, node := range clusterNodes {
		time.Sleep(faultSpacing) // spaces the faults
		s.backlog(burst)
		before := make([]float64, len(relays))
		publishedAgain := func() bool {
			for j, r := range relays {
				if r.p.published() <= before[j] {
					return false
				}
			}
			return true
		}
		_, err := harness.Rabbitmqctl(ctx, "-n", node, "stop_app")
		must(t, err)
		// Counted once the node's connections are closed: what a relay
		// publishes from now on goes through another node.
		stopped := time.Now()
		for j, r := range relays {
			before[j] = r.p.published()
		}
		// The outage: every relay, the one on the stopped node too, must
		// publish again through the other two before it ends.
		var failover time.Duration
		for time.Since(stopped) < nodeOutage {
			if failover == 0 && publishedAgain() {
				failover = time.Since(stopped)
			}
			time.Sleep(50 * time.Millisecond)
		}
		must(t, startNode(ctx, node))
		started := time.Now()
		s.waitQuorumMembers()
		back, from := time.Now(), s.cons.mark()
		if failover == 0 {
			t.Errorf("node %d (%s): not every relay published again during its %s outage", i+1, node, nodeOutage)
		}
		t.Logf("node %d (%s): stopped %s, every relay publishing again %s after the stop; started again in %s, quorum members online %s later",
			i+1, node, nodeOutage, failover.Round(time.Millisecond), started.Sub(stopped.Add(nodeOutage)).Round(time.Millisecond), back.Sub(started).Round(time.Millisecond))
		s.recovered(fmt.Sprintf("cluster node %s stopped", node), back, from)
		s.waitFor(recoverTimeout, "every relay to publish again after "+node+" came back", publishedAgain)
		s.waitShared(relays, "the relays to share the partitions after "+node+" stopped")
	}
	var reconnects float64
	for _, r := range relays {
		n, _ := r.p.Metric(`outbox_reconnects_total{connection="amqp"}`)
		reconnects += n
	}
	t.Logf("relays' AMQP reconnects: %v; consumer sessions: %d", reconnects, s.cons.sessionCount())
	// Each node, when stopped, had at least one relay on it: its own at the
	// start, or the ones that moved on to it.
	if reconnects < float64(len(clusterNodes)) {
		t.Errorf("outbox_reconnects_total{connection=\"amqp\"} = %v over the relays after %d nodes stopped in turn", reconnects, len(clusterNodes))
	}
	s.finish(0)
}

// startNode starts a cluster node's application and waits until it
// accepts connections; a no-op on a running node.
func startNode(ctx context.Context, node string) error {
	if _, err := harness.Rabbitmqctl(ctx, "-n", node, "start_app"); err != nil {
		return err
	}
	_, err := harness.Rabbitmqctl(ctx, "-n", node, "await_startup")
	return err
}

// waitQuorumMembers waits until the scenario's quorum queue has every
// cluster node among its members online.
func (s *scenario) waitQuorumMembers() {
	s.t.Helper()
	var last string
	if !harness.Within(recoverTimeout, func() bool {
		out, err := harness.Rabbitmqctl(context.Background(), "-n", clusterNodes[0], "list_queues", "name", "online", "--formatter", "json")
		if err != nil {
			last = err.Error()
			return false
		}
		last = out
		var queues []struct {
			Name   string   `json:"name"`
			Online []string `json:"online"`
		}
		if json.Unmarshal([]byte(out), &queues) != nil {
			return false
		}
		for _, q := range queues {
			if q.Name == s.queue {
				for _, n := range clusterNodes {
					if !slices.Contains(q.Online, n) {
						return false
					}
				}
				return true
			}
		}
		return false
	}) {
		s.t.Fatalf("quorum queue %s: not every node of %v online after %s; last list_queues:\n%s", s.queue, clusterNodes, recoverTimeout, last)
	}
}
