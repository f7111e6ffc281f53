package relay

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A claim older than the claim age bound when its batch is about to be
// sent is abandoned: nothing of it is sent, its rows are settled as not
// sent (no attempt), which releases them, and the next claim sends them.
func TestLoopAbandonsClaimOlderThanBound(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	d := b.l.claimAgeMax
	b.store.claims = []fakeClaim{
		{rows: rows("1a", "2b"), age: d + time.Millisecond},
		{rows: rows("1a", "2b"), age: d - time.Millisecond},
	}
	wantSteps(t, b.steps(t, 1), stepFailed)
	wantJournal(t, b.since(0), "member true", "take 0", "fence [0]", "waiting off", "claim [1 2]", "settle [1 2]", "ping")
	n := len(*b.j)
	b.step(t)
	wantJournal(t, b.since(n)[:3], "claim [1 2]", "send [1 2]", "settle [1 2]")
	for _, r := range b.store.settled[0] {
		if r.Outcome != NotSent || r.Reason != ReasonClaimTooOld {
			t.Errorf("abandoned row %d: outcome %d reason %q, want not sent, %s", r.Row.ID, r.Outcome, r.Reason, ReasonClaimTooOld)
		}
	}
	if n := testutil.ToFloat64(b.l.metrics.failures.WithLabelValues(ReasonClaimTooOld)); n != 2 {
		t.Errorf("outbox_publish_failures_total{reason=claim_too_old} %v, want 2", n)
	}
	wantLog(t, b, "claim abandoned: too old to send", 1)
	wantLog(t, b, "batch failed", 0)
}

// With a batch on the wire, a claim made behind it that is already too old
// is abandoned and claiming stops; the batch on the wire is settled as
// usual, and the abandoned rows go out, in order, at the next drain.
func TestLoopAbandonsClaimBehindBatchOnTheWire(t *testing.T) {
	t.Parallel()
	b := setupLoop(t)
	d := b.l.claimAgeMax
	b.store.claims = []fakeClaim{
		{rows: rows("1a", "2b", "3c"), full: true},
		{rows: rows("4a", "5b", "6c"), full: true, age: 2 * d},
		{rows: rows("4a", "5b", "6c")},
	}
	wantSteps(t, b.steps(t, 1), stepFailed)
	b.step(t)
	wantJournal(t, b.since(4)[:9], "claim [1 2 3]", "send [1 2 3]", "claim [4 5 6]",
		"settle [1 2 3]", "settle [4 5 6]", "ping",
		"claim [4 5 6]", "send [4 5 6]", "settle [4 5 6]")
	if n := testutil.ToFloat64(b.l.metrics.published); n != 6 {
		t.Errorf("published %v, want 6", n)
	}
}

// T and D follow from the session settings, the URL's where it sets them.
func TestDeadSessionFromSettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fromURL map[string]string
		t, d    time.Duration
		err     string
	}{
		{"defaults: tcp_user_timeout first", nil, 10 * time.Second, 5 * time.Second, ""},
		{"keepalives first", map[string]string{"tcp_user_timeout": "30s"}, 11 * time.Second, 5500 * time.Millisecond, ""},
		{"no user timeout", map[string]string{"options": "-c tcp_user_timeout=0 -c tcp_keepalives_count=5"},
			15 * time.Second, 7500 * time.Millisecond, ""},
		{"units", map[string]string{"tcp_keepalives_idle": "1min", "tcp_user_timeout": "2min"},
			66 * time.Second, 33 * time.Second, ""},
		{"system default refused", map[string]string{"tcp_keepalives_idle": "0"}, 0, 0, "tcp_keepalives_idle"},
		{"garbage refused", map[string]string{"options": "--tcp_keepalives_count=3s"}, 0, 0, "tcp_keepalives_count"},
		{"too short refused", map[string]string{"tcp_user_timeout": "500"}, 0, 0, "at least 2s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := deadSessionFrom(tc.fromURL)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ds.detectAfter() != tc.t || ds.claimAgeMax() != tc.d {
				t.Errorf("T %s, D %s; want %s, %s", ds.detectAfter(), ds.claimAgeMax(), tc.t, tc.d)
			}
		})
	}
}

// A database URL whose dead-session settings leave no claim age bound is a
// configuration error naming DatabaseURL.
func TestValidateRefusesDeadSessionSettings(t *testing.T) {
	cfg := Config{DatabaseURL: "postgres://localhost/db?tcp_keepalives_idle=0"}.withDefaults()
	err := cfg.validate()
	if err == nil || !strings.Contains(err.Error(), "DatabaseURL: tcp_keepalives_idle") {
		t.Fatalf("validate: %v, want a DatabaseURL error naming tcp_keepalives_idle", err)
	}
}
