package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// A cut relay stops in time. PostgreSQL frees a relay's locks (its claims'
// row locks and "in flight" lock, its leader lock) only once it notices
// that the relay's session is dead. A relay cut off from the database may
// meanwhile still be publishing what it claimed; a new leader passes its
// fence as soon as the locks go, and publishing later rows of the same keys
// before the cut relay's would break their order. So the relay sets how
// fast the server notices a dead session (deadSession, the one home of
// those settings), and sends no row of a claim older than a bound below
// that time (claimAgeMax); such a claim is abandoned: its rows are released
// unsent.

// deadSession is the server's detection of a dead relay session, from the
// session settings tcp_keepalives_idle, tcp_keepalives_interval,
// tcp_keepalives_count and tcp_user_timeout, which the relay sets on each
// of its sessions (see sessionSettings).
type deadSession struct {
	idle, interval time.Duration
	count          int
	userTimeout    time.Duration // 0: not set (the system's default: none)
}

// deadSessionDefault is what the relay sets: a session the relay no longer
// answers is probed after 5s without traffic, then every 2s, and dropped
// after 3 missed probes; data it does not acknowledge for 10s drops it too.
var deadSessionDefault = deadSession{idle: 5 * time.Second, interval: 2 * time.Second, count: 3, userTimeout: 10 * time.Second}

// deadSessionMin is the shortest detectAfter the relay accepts: half of it
// is the claim age bound, and a claim takes a round trip or two to make.
const deadSessionMin = 2 * time.Second

// settings returns d as session settings, in the units the server takes.
func (d deadSession) settings() []sessionSetting {
	sec := func(v time.Duration) string { return strconv.FormatInt(int64(v/time.Second), 10) }
	return []sessionSetting{
		{"tcp_keepalives_idle", sec(d.idle)},
		{"tcp_keepalives_interval", sec(d.interval)},
		{"tcp_keepalives_count", strconv.Itoa(d.count)},
		{"tcp_user_timeout", ms(d.userTimeout)},
	}
}

// detectAfter is T, the least time after the server last heard from a
// session before it may drop the session as dead, and its locks with it:
// keepalive probes give up after idle + interval × count; with
// tcp_user_timeout set, Linux drops the session once that much time passes
// without an acknowledgement, whichever comes first. A claim's session was
// last heard from no earlier than when the claim began.
func (d deadSession) detectAfter() time.Duration {
	t := d.idle + d.interval*time.Duration(d.count)
	if d.userTimeout > 0 {
		t = min(t, d.userTimeout)
	}
	return t
}

// claimAgeMax is D, the claim age bound: no row of a claim whose
// transaction began longer ago is sent. It is half of T, so that what a
// relay sent before it was cut has T - D (5s with the defaults) to reach
// the broker before a new leader may claim the rows behind it.
func (d deadSession) claimAgeMax() time.Duration { return d.detectAfter() / 2 }

// deadSessionFrom returns the relay's dead-session settings with those the
// database URL sets (directly or in options) in place of the defaults: the
// URL wins, as for every session setting, and T and D follow from what the
// sessions get. A keepalive setting of 0 (the system's default, two hours
// on Linux) or a T under deadSessionMin is refused.
func deadSessionFrom(fromURL map[string]string) (deadSession, error) {
	d := deadSessionDefault
	for _, f := range []struct {
		name string
		unit time.Duration  // 1: a plain count
		to   *time.Duration // nil: the count
		min  time.Duration
	}{
		{"tcp_keepalives_idle", time.Second, &d.idle, time.Second},
		{"tcp_keepalives_interval", time.Second, &d.interval, time.Second},
		{"tcp_keepalives_count", 1, nil, 1},
		{"tcp_user_timeout", time.Millisecond, &d.userTimeout, 0},
	} {
		v, ok := urlValue(fromURL, f.name)
		if !ok {
			continue
		}
		n, err := gucDuration(v, f.unit)
		if err != nil || n < f.min {
			return d, fmt.Errorf("%s=%q: the relay derives its claim age bound from it; use a positive value", f.name, v)
		}
		if f.to == nil {
			d.count = int(n)
		} else {
			*f.to = n
		}
	}
	if t := d.detectAfter(); t < deadSessionMin {
		return d, fmt.Errorf("the server would drop a silent session after %s (tcp_keepalives_*, tcp_user_timeout): "+
			"the relay needs at least %s", t, deadSessionMin)
	}
	return d, nil
}

// gucDuration parses a setting's value as the server does for an integer
// with a time unit: digits, then optionally ms, s, min, h or d; without a
// unit, unit applies. A unit of 1 is a plain count, which takes none.
func gucDuration(v string, unit time.Duration) (time.Duration, error) {
	v = strings.TrimSpace(v)
	i := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	num, suffix := v, ""
	if i >= 0 {
		num, suffix = v[:i], strings.TrimSpace(v[i:])
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %q: %w", v, err)
	}
	units := map[string]time.Duration{"": unit, "ms": time.Millisecond, "s": time.Second, "min": time.Minute,
		"h": time.Hour, "d": 24 * time.Hour}
	u, ok := units[suffix]
	if !ok || (unit == 1 && suffix != "") {
		return 0, fmt.Errorf("parse %q: unknown unit %q", v, suffix)
	}
	return time.Duration(n) * u, nil
}

// urlValue returns the value the URL's runtime parameters give name,
// directly or through options (see urlSets).
func urlValue(params map[string]string, name string) (string, bool) {
	if v, ok := params[name]; ok {
		return v, true
	}
	opts := params["options"]
	for _, prefix := range []string{"-c " + name + "=", "-c" + name + "=", "--" + name + "="} {
		if i := strings.Index(opts, prefix); i >= 0 {
			v, _, _ := strings.Cut(opts[i+len(prefix):], " ")
			return v, true
		}
	}
	return "", false
}

// errClaimTooOld marks a claim abandoned because it passed the claim age
// bound before all of its rows were sent.
var errClaimTooOld = errors.New("claim older than the claim age bound")

// abandonFrom gives up sending the rows of b from row i on: they count as
// not sent (reason claim_too_old, no attempt) and are claimed again once
// the claim is settled, which releases their locks. It returns the error
// that says so.
func (b *batch) abandonFrom(i int, now time.Time) error {
	age := now.Sub(b.claim.at)
	err := fmt.Errorf("%w: it began %s ago, the bound is %s", errClaimTooOld,
		age.Round(time.Millisecond), b.sendBy.Sub(b.claim.at))
	for ; i < len(b.rows); i++ {
		if b.send[i] {
			b.send[i] = false
			b.results[i] = Result{Row: &b.rows[i], Outcome: NotSent, Reason: ReasonClaimTooOld, Err: err}
		}
	}
	return err
}

// sendInTime sends b, unless its claim is older than the claim age bound:
// then it abandons the claim and returns why. The publisher checks the
// bound again before each row it sends (see batch.sendBy), for a Send that
// started in time and ran late.
func (l *loop) sendInTime(ctx context.Context, b *batch) error {
	b.sendBy = b.claim.at.Add(l.claimAgeMax)
	if now := l.clock.Now(); now.After(b.sendBy) {
		return b.abandonFrom(0, now)
	}
	l.pub.Send(ctx, b)
	return nil
}
