//go:build faults

package faults

import (
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

const (
	// readOnlyLeeway is how long a relay refused by the standby is watched
	// publishing nothing while the other leads.
	readOnlyLeeway = 2 * time.Second
	// noPrimaryFor is how long no server accepts writes, between the
	// primary's death and the promotion: a failover manager's detection
	// time, shortened.
	noPrimaryFor = 2 * time.Second
)

// TestFailoverToPromotedStandby runs the relay on a primary and its
// streaming standby of the test's own, through a URL naming both hosts
// with target_session_attrs=read-write (README, "Poolers, standbys and
// database settings"). Under load it kills the primary (pg_ctl stop -m
// immediate) and, noPrimaryFor later, promotes the standby. The producer
// carries on against the new primary; the relay must reconnect there, lead
// again and deliver every committed row. Replication is synchronous, so
// the database itself loses no committed row; the relay's own deletes are
// not synchronous, so rows it published just before the kill may be
// published again.
//
// Before the failover, a second relay whose URL names the standby alone
// must refuse to lead (reason=read_only) and publish nothing.
func TestFailoverToPromotedStandby(t *testing.T) {
	pg := testenv.StartPrimaryStandby(t)
	s := newScenarioOn(t, "failover_promoted_standby", pg.Env(t))
	s.startLoad()
	r := s.startRelay(nil)
	harness.WaitFor(t, startTimeout, "relay-1 to lead on the primary", r.isLeader)
	s.waitFlowing("relay-1 on the primary")

	pg.WaitReplayed(t) // the table exists on the standby
	ro := s.startRelay(map[string]string{"OUTBOX_DATABASE_URL": pg.StandbyURL})
	harness.WaitFor(t, startTimeout, "relay-2, given the standby alone, to refuse to lead", func() bool {
		return ro.Output().Count("relay cannot lead") > 0
	})
	time.Sleep(readOnlyLeeway) // relay-2 must publish nothing meanwhile
	if n := ro.Output().Count("reason=read_only"); n == 0 {
		t.Errorf("relay-2 refused to lead on the standby, but not with reason=read_only:\n%s", ro.Output().Grep(5, "cannot lead"))
	}
	if ro.isLeader() || ro.published() != 0 {
		t.Errorf("relay-2, on the standby, reports outbox_leader=%t and outbox_published_total %v; want false and 0",
			ro.isLeader(), ro.published())
	}
	// Once the standby is promoted, relay-2 would resume there (README) and
	// might take the lead before relay-1: stop it first.
	if code, ok := ro.terminate(10 * time.Second); !ok || code != 0 {
		t.Errorf("relay-2 did not exit 0 on SIGTERM (exited %t, code %d)", ok, code)
	}
	if !r.isLeader() {
		t.Fatalf("relay-1 stopped leading on the primary")
	}
	if n := r.Output().Count("relay cannot lead"); n > 0 {
		t.Errorf("relay-1 refused to lead %d times on the primary:\n%s", n, r.Output().Grep(5, "cannot lead"))
	}

	s.backlog(burst) // the kill strikes a busy relay
	pg.WaitReplayed(t)
	pg.KillPrimary(t)
	killed := time.Now()
	time.Sleep(noPrimaryFor) // the outage
	// Its lock session died with the primary: outbox_leader 1 here would
	// tell an alert that all is well.
	t.Logf("relay-1, %s into the outage: outbox_leader=%t, /statusz connected=%t",
		time.Since(killed).Round(time.Millisecond), r.isLeader(), r.Connected())
	pg.Promote(t)
	promoted, from := time.Now(), s.cons.mark()
	t.Logf("primary killed; standby promoted %s later", promoted.Sub(killed).Round(time.Millisecond))
	s.recovered("primary killed, standby promoted: promotion to first delivery", promoted, from)
	harness.WaitFor(t, recoverTimeout, "relay-1 to lead on the promoted standby", r.isLeader)
	ports, err := r.LocalPorts(pg.StandbyPort())
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) == 0 {
		t.Errorf("relay-1 leads but has no connection to the promoted standby (port %d)", pg.StandbyPort())
	}
	if n, _ := r.Metric(`outbox_reconnects_total{connection="postgres_listener"}`); n < 1 {
		t.Errorf("outbox_reconnects_total{connection=\"postgres_listener\"} = %v after the failover; want at least 1", n)
	}
	t.Logf("relay-1 during the failover:\n%s", r.Output().Grep(20, "listener", "leadership", "cannot lead", "failed"))
	s.finish(0)
}
