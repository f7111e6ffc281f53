package relay

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/lmittmann/tint"
)

// Sharing a table. Rows map to the table's P partitions (migration 007);
// a relay claims only rows of partitions it owns, and owns partition p
// while its LISTEN session holds p's session advisory lock, so ownership
// ends with the session: no lease, no heartbeat, no table of relays.
//
// Members are the relays whose LISTEN session holds the table's members
// lock, shared: those with a broker connection. A
// member's target is ⌊P/N⌋, plus one for the P mod N of them that own the
// most (see target), so the targets add up to P and every member computes
// the same ones. At each look
// at pg_locks a relay above its target releases partitions (nothing is in
// flight between two steps of the loop: each drain settles its batches)
// and a relay below it takes free ones. A group that does not change moves
// nothing; relays beyond P own nothing and take over as soon as a member
// leaves.
//
// A partition gained is not claimed before its fence passes (pgStore.Fence):
// every claim holds its partitions' "in flight" locks shared until it is
// settled, and the new owner takes them exclusively, so it waits for
// whatever the previous owner still has on the wire.

// groupView is one look at the table's relays, from pg_locks.
type groupView struct {
	// partitions is the table's P as recorded now, and settings says the
	// table has migration 007's settings (before it, P is 1).
	partitions int
	settings   bool
	// relays are the LISTEN sessions of the table's relays, members those
	// of them that may own partitions; both by backend pid, ascending.
	relays, members []int32
	// owners[p] is the session holding partition p's lock, 0 for none.
	owners []int32
}

// target returns how many partitions the relay with session pid should
// own: 0 if it is not a member. Each member gets ⌊P/N⌋; the P mod N left
// over go to the members that own the most, lowest pid first among equals,
// so that a relay keeps what it has when another joins: with one
// partition, the leader stays the leader whoever joins, and a rolling
// restart moves a partition only when its owner goes.
func (v groupView) target(pid int32) int {
	rank := slices.Index(v.ranked(), pid)
	if rank < 0 {
		return 0
	}
	return Shares(v.partitions, len(v.members))[rank]
}

// Shares returns how many of p partitions each of n relays owns once they
// are balanced, largest first: ⌊p/n⌋, and one more for p mod n of them.
func Shares(p, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = p / n
		if i < p%n {
			s[i]++
		}
	}
	return s
}

// ranked returns the members by partitions owned, most first, then by pid.
func (v groupView) ranked() []int32 {
	count := map[int32]int{}
	for _, o := range v.owners {
		count[o]++
	}
	r := slices.Clone(v.members)
	slices.SortStableFunc(r, func(a, b int32) int {
		if count[a] != count[b] {
			return count[b] - count[a]
		}
		return int(a) - int(b)
	})
	return r
}

// free returns how many partitions nobody owns.
func (v groupView) free() int {
	n := 0
	for _, o := range v.owners {
		if o == 0 {
			n++
		}
	}
	return n
}

// plan returns the partitions the relay with session pid, holding held
// (ascending), takes and releases, given v: above its target it releases
// its highest ones, below it it takes the lowest free ones.
func plan(v groupView, pid int32, held []int) (take, release []int) {
	target := v.target(pid)
	if len(held) > target {
		return nil, slices.Clone(held[target:])
	}
	for p, o := range v.owners {
		if len(held)+len(take) == target {
			break
		}
		if o == 0 {
			take = append(take, p)
		}
	}
	return take, nil
}

// Look cadence: a relay looks at the group every lookEvery, at once when
// another relay announces a change (see pgListener.Member), and every
// lookSoon while partitions move or lie free. A relay alone, owning every
// partition, looks every lookAlone: a joiner announces itself. A look
// proves the LISTEN session alive, so lookAlone is under the idle ping's
// interval, which then never comes due: an idle relay asks one statement
// per look. A drain stops claiming when a look is due (see lookDue).
const (
	lookEvery = standbyInterval
	lookSoon  = 100 * time.Millisecond
	lookAlone = listenerPingInterval - time.Second
)

// ownFenceWait bounds the fence of a relay that already claims for other
// partitions: it tries again at its next look rather than keep them
// waiting.
const ownFenceWait = 50 * time.Millisecond

// share keeps the relay's part of the table's partitions: it joins the
// members, looks at the group when a look is due, releases and takes
// partitions toward its target and fences those it gained. It reports
// whether the relay owns a partition to claim for; if not, it has waited.
func (l *loop) share(ctx context.Context) bool {
	if !l.member {
		if err := l.lis.Member(ctx, true); err != nil {
			l.shareFailed(ctx, err)
			return false
		}
		l.member, l.nextLook = true, time.Time{}
	}
	if l.lis.GroupChanged() || l.lookDue() {
		if !l.look(ctx) {
			return false
		}
	}
	if len(l.gained) > 0 {
		l.fence(ctx)
	}
	if len(l.owned) == 0 {
		l.wait(ctx, max(0, min(l.nextLook.Sub(l.clock.Now()), standbyInterval)))
		return false
	}
	return true
}

// look reads the group and moves partitions. It reports false if the
// relay must start over (its session was lost or closed) or stop.
func (l *loop) look(ctx context.Context) bool {
	v, err := l.lis.Look(ctx)
	if err != nil {
		l.shareFailed(ctx, err)
		return false
	}
	if !l.samePartitions(ctx, v) {
		return false
	}
	pid := l.lis.PID()
	take, release := plan(v, pid, l.held())
	for _, p := range release {
		if err := l.lis.Release(ctx, p); err != nil {
			l.shareFailed(ctx, err)
			return false
		}
		l.owned, l.gained = without(l.owned, p), without(l.gained, p)
		l.metrics.partitionChanges.WithLabelValues("released").Inc()
	}
	var gained []int
	for _, p := range take {
		got, err := l.lis.Take(ctx, p)
		if err != nil {
			l.shareFailed(ctx, err)
			return false
		}
		if got {
			gained = append(gained, p)
			l.gained = append(l.gained, p)
			l.metrics.partitionChanges.WithLabelValues("gained").Inc()
			if l.gainedAt.IsZero() {
				l.gainedAt = l.clock.Now()
			}
		}
	}
	if len(gained)+len(release) > 0 {
		l.log.Info("partitions moved", slog.Any("gained", gained), slog.Any("released", release),
			slog.Int("target", v.target(pid)), slog.Int("members", len(v.members)))
	}
	l.setOwned(ctx, l.owned)
	every := lookEvery
	switch {
	case len(take)+len(release) > 0 || len(l.gained) > 0 || v.free() > 0 && len(v.members) > 0:
		every = lookSoon
	case len(v.relays) == 1 && len(l.owned) == v.partitions:
		every = lookAlone
	}
	l.nextLook, l.moving = l.clock.Now().Add(every), every == lookSoon
	return true
}

// samePartitions checks v's P against the relay's. At the first look it
// takes it (a relay told OUTBOX_PARTITIONS checked it at start); later, a
// changed P means migrate changed it: a relay told its P stops, one that
// follows the table starts over with the new one.
func (l *loop) samePartitions(ctx context.Context, v groupView) bool {
	if l.partitions == 0 {
		l.partitions, l.settings = v.partitions, v.settings
		l.store.SetPartitions(v.partitions, v.settings)
		l.prog.partitions.Store(int32(v.partitions))
		return true
	}
	if v.partitions == l.partitions && v.settings == l.settings {
		return true
	}
	if l.cfg.Partitions != 0 && v.partitions != l.cfg.Partitions {
		l.fatal = fmt.Errorf("the table's partitions changed from %d to %d while the relay ran with OUTBOX_PARTITIONS=%d: "+
			"set OUTBOX_PARTITIONS=%d, or leave it unset to follow the table", l.partitions, v.partitions, l.cfg.Partitions, v.partitions)
		return false
	}
	l.log.Warn("the table's partitions changed; taking partitions anew",
		slog.Int("was", l.partitions), slog.Int("now", v.partitions))
	l.partitions = 0
	l.lis.Close(ctx) // drops every partition lock; connecting again starts over
	l.loseLeadership()
	return false
}

// fence waits for the claims in flight on the gained partitions (see
// pgStore.Fence), then claims for them. A relay that owns none yet waits
// up to fenceWait; one that does waits a moment and tries again at its
// next look, so its own partitions do not wait for another's.
func (l *loop) fence(ctx context.Context) {
	wait := fenceWait(l.cfg)
	if len(l.owned) > 0 {
		wait = ownFenceWait
	}
	if err := l.store.Fence(ctx, wait, l.gained); err != nil {
		if ctx.Err() == nil && (len(l.owned) == 0 || l.clock.Now().Sub(l.gainedAt) >= fenceWait(l.cfg)) {
			l.log.Warn("previous owner's claims did not settle in time; still waiting", tint.Err(withHint(err)),
				slog.Any("partitions", l.gained))
			l.gainedAt = l.clock.Now()
		}
		if len(l.owned) == 0 {
			l.nextLook = l.clock.Now() // look again: the group may have changed meanwhile
		}
		return
	}
	if d := l.clock.Now().Sub(l.gainedAt); d > 100*time.Millisecond {
		l.log.Info("waited for the previous owner's batches in flight", slog.Duration("waited", d.Round(time.Millisecond)),
			slog.Any("partitions", l.gained))
	}
	owned := l.held()
	l.gained, l.gainedAt = nil, time.Time{}
	l.setOwned(ctx, owned)
}

// lookDue reports whether the relay should look at the group before it
// claims again.
func (l *loop) lookDue() bool { return !l.clock.Now().Before(l.nextLook) }

// setOwned records the partitions the relay claims for: the store's
// claims, the gauges, leadership.
func (l *loop) setOwned(ctx context.Context, owned []int) {
	was := l.leader
	l.owned = owned
	l.metrics.partitionsOwned.Set(float64(len(owned)))
	pid := l.lis.PID()
	if len(owned) == 0 {
		pid = 0
	}
	l.store.SetOwner(pid, owned)
	if err := l.lis.SetOwned(ctx, owned); err != nil && len(owned) > 0 {
		l.shareFailed(ctx, err)
		return
	}
	l.prog.setOwned(owned, l.partitions)
	l.leader = len(owned) > 0
	if l.leader == was {
		return
	}
	l.prog.setLeader(pid)
	l.metrics.leader.Set(b2f(l.leader))
	if !l.leader {
		l.log.Info("owning no partition: standing by")
		return
	}
	l.log.Info("leadership gained", slog.Any("partitions", owned), slog.Int("of", l.partitions))
	// A relay killed while it waited leaves the flag set, and writers
	// would notify nobody until it is cleared. This one claims next.
	l.setWaiting(ctx, false)
	l.store.Warm(ctx)
}

// held returns the partitions whose locks the relay holds: owned and
// gained, ascending.
func (l *loop) held() []int {
	h := append(slices.Clone(l.owned), l.gained...)
	slices.Sort(h)
	return h
}

// shareFailed handles a failed look, take or release: the session is
// suspect, so the relay starts over with it.
func (l *loop) shareFailed(ctx context.Context, err error) {
	if ctx.Err() == nil {
		l.listenerLost(fmt.Errorf("share partitions: %w", err))
	}
}

func without(s []int, v int) []int {
	return slices.DeleteFunc(slices.Clone(s), func(x int) bool { return x == v })
}
