//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// killWithin spaces the kills: each lands at a random moment within that
// time of a burst of writes, perhaps before the relay even leads.
const killWithin = time.Second

// TestKill9Relay kills the only relay with SIGKILL at random moments while
// the producer writes, and starts a new one each time.
func TestKill9Relay(t *testing.T) {
	s := newScenario(t, "kill9")
	s.startLoad()
	r := s.startRelay(nil)
	s.waitFlowing("first relay")
	for i := range 5 {
		s.backlog(burst)
		time.Sleep(rand.N(killWithin)) // a random moment
		r.Kill()
		killed, from := time.Now(), s.cons.mark()
		r = s.startRelay(nil)
		s.recovered(fmt.Sprintf("SIGKILL %d, relay restarted", i+1), killed, from)
	}
	s.finish(0)
}

// maxTakeover is the longest a standby may take, from the leader's death to
// outbox_leader 1 and deliveries resumed (DESIGN.md: "within
// seconds").
const maxTakeover = 2 * time.Second

// steadyWindow is how long the steady state is watched between faults.
const steadyWindow = 2 * time.Second

// TestLeaderKilledStandbyTakesOver runs two, then three relays on one table,
// checks that only the leader publishes, kills the leader with SIGKILL
// twice (starting a fresh standby after each kill), and measures the
// takeover.
func TestLeaderKilledStandbyTakesOver(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d relays", n), func(t *testing.T) {
			killLeaders(t, fmt.Sprintf("takeover_%d_relays", n), n, nil)
		})
	}
}

// TestLeaderKilledBehindSessionPooler is the takeover through PgBouncer in
// session mode with its default configuration: its server connections
// outlive the relays' sessions, and the killed leader's lock must not.
func TestLeaderKilledBehindSessionPooler(t *testing.T) {
	pb := testenv.StartPgBouncer(t, testenv.PgBouncerOptions{PoolMode: "session"})
	killLeaders(t, "takeover_pgbouncer_session", 2, map[string]string{"OUTBOX_DATABASE_URL": pb.URL})
}

// killLeaders runs n relays with the extra environment, kills the leader
// twice under load and checks each takeover.
func killLeaders(t *testing.T, name string, n int, extra map[string]string) {
	s := newScenario(t, name)
	s.startLoad()
	relays := make([]*relayProc, n)
	for i := range relays {
		relays[i] = s.startRelay(extra)
	}
	for _, r := range relays {
		harness.WaitFor(t, startTimeout, r.name+" to be connected", r.Connected)
	}
	var leader *relayProc
	harness.WaitFor(t, startTimeout, "one relay to report outbox_leader 1", func() bool {
		leader = findLeader(relays)
		return leader != nil
	})
	s.waitFlowing("first leader")
	for k := range 2 {
		s.checkSteadyState(relays, leader)
		if extra["OUTBOX_DATABASE_URL"] == "" {
			// Behind a pooler the leader's backend is the pooler's client,
			// not the relay's: status cannot be matched to a process.
			s.checkStatusNamesLeader(leader)
		}

		s.backlog(burst)
		time.Sleep(rand.N(killWithin)) // a random moment
		leader.Kill()
		killed, from := time.Now(), s.cons.mark()
		alive := slices.DeleteFunc(slices.Clone(relays), func(r *relayProc) bool { return r == leader })
		var next *relayProc
		led := harness.WaitFor(t, recoverTimeout, "a standby to report outbox_leader 1", func() bool {
			next = findLeader(alive)
			return next != nil
		})
		delivered := s.waitDelivered("takeover", killed, from, recoverTimeout)
		takeover := max(led.Sub(killed), delivered)
		s.faults++
		s.recoveries = append(s.recoveries, takeover)
		t.Logf("takeover %d: %s became leader %s after the kill, deliveries resumed after %s",
			k+1, next.name, led.Sub(killed).Round(time.Millisecond), delivered.Round(time.Millisecond))
		if takeover > maxTakeover {
			t.Errorf("takeover %d took %s, want at most %s", k+1, takeover.Round(time.Millisecond), maxTakeover)
		}
		standby := s.startRelay(extra)
		harness.WaitFor(t, startTimeout, standby.name+" to be connected", standby.Connected)
		relays = append(alive, standby)
		leader = next
	}
	s.checkSteadyState(relays, leader)
	s.finish(0)
}

// findLeader returns the one relay whose /metrics shows outbox_leader 1, or
// nil if none or several do.
func findLeader(relays []*relayProc) *relayProc {
	var found *relayProc
	for _, r := range relays {
		if r.isLeader() {
			if found != nil {
				return nil
			}
			found = r
		}
	}
	return found
}

// checkSteadyState watches the relays for steadyWindow: leader must stay the
// only one with outbox_leader 1 and the only one publishing, while it
// publishes. Standbys here never led, so their outbox_published_total is 0.
func (s *scenario) checkSteadyState(relays []*relayProc, leader *relayProc) {
	t := s.t
	t.Helper()
	before := leader.published()
	end := time.Now().Add(steadyWindow)
	for time.Now().Before(end) {
		for _, r := range relays {
			if r == leader {
				if !r.isLeader() {
					t.Fatalf("%s stopped reporting outbox_leader 1 in steady state", r.name)
				}
				continue
			}
			if r.isLeader() {
				t.Fatalf("%s reports outbox_leader 1 beside %s", r.name, leader.name)
			}
			if p := r.published(); p != 0 {
				t.Fatalf("standby %s has outbox_published_total %v while %s leads; want 0", r.name, p, leader.name)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if after := leader.published(); after <= before {
		t.Errorf("leader %s published nothing in %s of load (outbox_published_total %v → %v)", leader.name, steadyWindow, before, after)
	}
}

// checkStatusNamesLeader checks that `outbox-relay status -o json` names,
// as leader, the PostgreSQL session of the relay whose metrics say it leads.
func (s *scenario) checkStatusNamesLeader(leader *relayProc) {
	t := s.t
	t.Helper()
	out := runBin(t, map[string]string{"OUTBOX_DATABASE_URL": s.relayEnv(nil)["OUTBOX_DATABASE_URL"], "OUTBOX_TABLE": s.env.Table.String()},
		"status", "-o", "json")
	var st struct {
		Leader *struct {
			PID int32 `json:"pid"`
		} `json:"leader"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if st.Leader == nil {
		t.Fatalf("status names no leader while %s reports outbox_leader 1:\n%s", leader.name, out)
	}
	var port int
	if err := s.env.Pool.QueryRow(context.Background(), "select coalesce(client_port, -1) from pg_stat_activity where pid = $1", st.Leader.PID).Scan(&port); err != nil {
		t.Fatalf("session of leader pid %d: %v", st.Leader.PID, err)
	}
	ports, err := leader.LocalPorts(dbPort(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ports, port) {
		t.Errorf("status names backend %d (client port %d) as leader; %s, which reports outbox_leader 1, has ports %v",
			st.Leader.PID, port, leader.name, ports)
	}
}
