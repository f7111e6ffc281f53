package relay

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestSessionSettingsLeaveWhatTheURLSets(t *testing.T) {
	names := func(ss []sessionSetting) string {
		var out []string
		for _, s := range ss {
			out = append(out, s.name+"="+s.value)
		}
		return strings.Join(out, " ")
	}
	const keepalives = "tcp_keepalives_idle=5 tcp_keepalives_interval=2 tcp_keepalives_count=3 tcp_user_timeout=10000 "
	const idle = "idle_in_transaction_session_timeout=0 idle_session_timeout=0 default_transaction_isolation=read committed enable_seqscan=off enable_bitmapscan=off jit=off"
	for _, tc := range []struct {
		name    string
		fromURL map[string]string
		major   int
		want    string
	}{
		{"defaults", nil, 15, keepalives + "synchronous_commit=off statement_timeout=30000 lock_timeout=10000 " + idle},
		{"PostgreSQL 17 has transaction_timeout too", nil, 17,
			keepalives + "synchronous_commit=off statement_timeout=30000 lock_timeout=10000 " + idle + " transaction_timeout=0"},
		{"URL parameters win", map[string]string{"statement_timeout": "1000", "synchronous_commit": "on"}, 15,
			keepalives + "lock_timeout=10000 " + idle},
		{"options -c and -- win", map[string]string{"options": "-c lock_timeout=5s --tcp_user_timeout=1 -cstatement_timeout=0"}, 15,
			"tcp_keepalives_idle=5 tcp_keepalives_interval=2 tcp_keepalives_count=3 synchronous_commit=off " + idle},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := names(sessionSettings(tc.fromURL, tc.major)); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestWithHintNamesTheCause(t *testing.T) {
	for code, want := range map[string]string{
		sqlstateReadOnly:          "target_session_attrs=read-write",
		sqlstateDuplicatePrepared: "transaction-mode pooler",
		sqlstateUndefinedPrepared: "transaction-mode pooler",
		sqlstateIdleInTxTimeout:   "idle_in_transaction_session_timeout",
	} {
		err := withHint(fmt.Errorf("claim: %w", &pgconn.PgError{Code: code, Message: "boom"}))
		var pe *pgconn.PgError
		if !strings.Contains(err.Error(), want) || !errors.As(err, &pe) {
			t.Errorf("%s: %v, want a hint with %q that still wraps the PgError", code, err, want)
		}
	}
	plain := errors.New("plain")
	if withHint(plain) != plain {
		t.Error("a non-PostgreSQL error got a hint")
	}
}
