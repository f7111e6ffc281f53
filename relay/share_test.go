package relay

import (
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// group simulates relays that share a table by plan alone: owners[p] is
// the pid holding partition p, members the pids of the members.
type group struct {
	owners  []int32
	members []int32
	moves   []int // times each partition changed owner (released or taken)
}

func newGroup(p int, members ...int32) *group {
	g := &group{owners: make([]int32, p), moves: make([]int, p)}
	for _, m := range members {
		g.join(m)
	}
	return g
}

func (g *group) join(pid int32) {
	g.members = append(g.members, pid)
	slices.Sort(g.members)
}

// kill ends pid's session: its locks are gone.
func (g *group) kill(pid int32) {
	g.members = slices.DeleteFunc(g.members, func(m int32) bool { return m == pid })
	for p, o := range g.owners {
		if o == pid {
			g.owners[p] = 0
			g.moves[p]++
		}
	}
}

func (g *group) view() groupView {
	return groupView{partitions: len(g.owners), settings: true, relays: g.members, members: g.members, owners: slices.Clone(g.owners)}
}

func (g *group) held(pid int32) []int {
	var h []int
	for p, o := range g.owners {
		if o == pid {
			h = append(h, p)
		}
	}
	return h
}

// settle lets every member look in turn until a round moves nothing, and
// returns how many partitions moved; it fails after 20 rounds.
func (g *group) settle(t *testing.T) int {
	t.Helper()
	total := 0
	for round := 0; round < 20; round++ {
		moved := 0
		for _, pid := range g.members {
			take, release := plan(g.view(), pid, g.held(pid))
			for _, p := range release {
				g.owners[p] = 0
				g.moves[p]++
				moved++
			}
			for _, p := range take {
				if g.owners[p] != 0 {
					t.Fatalf("relay %d planned to take partition %d of relay %d", pid, p, g.owners[p])
				}
				g.owners[p] = pid
				moved++
			}
		}
		if moved == 0 {
			return total
		}
		total += moved
	}
	t.Fatalf("no steady state after 20 rounds: owners %v", g.owners)
	return 0
}

// check fails unless every partition is owned, by a member, and every
// member owns its target, which differ by one at most.
func (g *group) check(t *testing.T) {
	t.Helper()
	v := g.view()
	lo, hi := len(g.owners), 0
	for _, m := range g.members {
		n := len(g.held(m))
		if n != v.target(m) {
			t.Errorf("relay %d owns %d partitions, target %d", m, n, v.target(m))
		}
		lo, hi = min(lo, n), max(hi, n)
	}
	if hi-lo > 1 {
		t.Errorf("shares from %d to %d partitions", lo, hi)
	}
	for p, o := range g.owners {
		if !slices.Contains(g.members, o) {
			t.Errorf("partition %d owned by %d, not a member", p, o)
		}
	}
}

// Any group converges to every member at its target, every partition
// owned, and then moves nothing more.
func TestPlanConverges(t *testing.T) {
	t.Parallel()
	for _, p := range []int{1, 2, 12, 256} {
		for _, n := range []int{1, 2, 3, 5, 7, 13} {
			t.Run(fmt.Sprintf("P=%d N=%d", p, n), func(t *testing.T) {
				var pids []int32
				for i := range n {
					pids = append(pids, int32(1000+7*i))
				}
				g := newGroup(p, pids...)
				g.settle(t)
				g.check(t)
				if moved := g.settle(t); moved != 0 {
					t.Errorf("a steady group moved %d partitions", moved)
				}
				standby := 0
				for _, m := range g.members {
					if len(g.held(m)) == 0 {
						standby++
					}
				}
				if want := max(0, n-p); standby != want {
					t.Errorf("%d relays own nothing, want %d", standby, want)
				}
			})
		}
	}
}

// A joiner takes only what the others give up; a killed relay's
// partitions go to the survivors, and nothing else moves.
func TestPlanJoinAndKill(t *testing.T) {
	t.Parallel()
	g := newGroup(12, 10, 20)
	g.settle(t)
	before := slices.Clone(g.owners)
	g.join(30)
	// Each of the 4 partitions the joiner needs is released once and
	// taken once.
	if moved := g.settle(t); moved != 8 {
		t.Errorf("a join moved %d times, want 8 (4 released, 4 taken)", moved)
	}
	g.check(t)
	changed := 0
	for p := range g.owners {
		if g.owners[p] != before[p] {
			changed++
			if g.owners[p] != 30 {
				t.Errorf("partition %d moved from %d to %d, not to the joiner", p, before[p], g.owners[p])
			}
		}
	}
	if changed != 4 {
		t.Errorf("%d partitions changed owner, want 4", changed)
	}

	before = slices.Clone(g.owners)
	g.kill(20)
	if moved := g.settle(t); moved != 4 {
		t.Errorf("a kill moved %d partitions, want the 4 freed", moved)
	}
	g.check(t)
	for p := range g.owners {
		if before[p] != 20 && g.owners[p] != before[p] {
			t.Errorf("partition %d of a survivor moved from %d to %d", p, before[p], g.owners[p])
		}
	}
}

// A rolling restart (each relay killed and replaced by one with a higher
// pid, in turn) moves each partition a bounded number of times.
func TestPlanRollingRestart(t *testing.T) {
	t.Parallel()
	g := newGroup(12, 10, 20, 30)
	g.settle(t)
	next := int32(40)
	for _, old := range []int32{10, 20, 30} {
		g.kill(old)
		g.settle(t)
		g.join(next)
		next += 10
		g.settle(t)
		g.check(t)
	}
	for p, n := range g.moves {
		if n > 4 {
			t.Errorf("partition %d moved %d times in a rolling restart of 3 relays", p, n)
		}
	}
}

// Relays beyond P stand by and take over at once when an owner goes.
func TestPlanStandbysTakeOver(t *testing.T) {
	t.Parallel()
	g := newGroup(2, 10, 20, 30, 40)
	g.settle(t)
	g.check(t)
	if len(g.held(30)) != 0 || len(g.held(40)) != 0 {
		t.Fatalf("standbys own %v, %v", g.held(30), g.held(40))
	}
	g.kill(10)
	g.settle(t)
	g.check(t)
	if len(g.held(30)) != 1 {
		t.Errorf("the first standby owns %v after the owner's death, want one partition", g.held(30))
	}
}

// A relay that is not a member takes nothing and gives up what it holds.
func TestPlanNonMember(t *testing.T) {
	t.Parallel()
	v := groupView{partitions: 4, members: []int32{10}, owners: []int32{99, 0, 10, 0}}
	if take, release := plan(v, 99, []int{0}); len(take) != 0 || !slices.Equal(release, []int{0}) {
		t.Errorf("non-member: take %v, release %v; want nothing, [0]", take, release)
	}
	if take, release := plan(v, 10, []int{2}); !slices.Equal(take, []int{1, 3}) || len(release) != 0 {
		t.Errorf("member: take %v, release %v; want the free [1 3]", take, release)
	}
}

// With one partition the leader stays the leader whoever joins, even a
// relay of a lower pid; with more, the leftover partitions stay with the
// relays that own them.
func TestPlanKeepsWhatIsOwned(t *testing.T) {
	t.Parallel()
	g := newGroup(1, 50)
	g.settle(t)
	g.join(10)
	if moved := g.settle(t); moved != 0 || g.owners[0] != 50 {
		t.Errorf("a joiner of lower pid moved %d, owner %d; want 0 moves, 50", moved, g.owners[0])
	}
	g = newGroup(13, 50, 60) // 7 and 6
	g.settle(t)
	g.join(10)
	// 5, 4, 4: the leftover stays with the relay that owned 7; the
	// joiner's 4 are released once and taken once.
	if moved := g.settle(t); moved != 8 || len(g.held(50)) != 5 {
		t.Errorf("a third relay moved %d, relay 50 owns %d; want 8, 5", moved, len(g.held(50)))
	}
	g.check(t)
}

// A relay's LISTEN wait wakes for rows of its partitions, for an empty
// payload and for another relay's change of the group, not for rows of
// partitions it does not own, nor of transactions its last claim saw
// committed, nor for its own announcement.
func TestListenerWakesForItsPartitions(t *testing.T) {
	t.Parallel()
	l := &pgListener{pid: 7}
	l.owned = map[int]bool{1: true, 3: true}
	l.Claimed("95:101:97,100") // the last claim's snapshot: 97 and 100 still running
	for _, tc := range []struct {
		payload string
		pid     uint32
		wakes   bool
		changed bool
	}{
		{"1", 9, true, false},
		{"3", 9, true, false},
		{"2", 9, false, false},
		{"1:100", 9, true, false}, // running when the claim looked: its rows were not there
		{"3:97", 9, true, false},
		{"1:101", 9, true, false}, // begun after
		{"3:250", 9, true, false},
		{"1:99", 9, false, false}, // committed when the claim looked: taken then
		{"3:94", 9, false, false},
		{"2:250", 9, false, false},
		{"1:x", 9, true, false},
		{"", 9, true, false},
		{groupPayload, 7, true, false},
		{groupPayload, 9, true, true},
	} {
		got := l.wakes(&pgconn.Notification{PID: tc.pid, Payload: tc.payload})
		if got != tc.wakes || l.GroupChanged() != tc.changed {
			t.Errorf("payload %q from %d: wakes %t, want %t (changed %t)", tc.payload, tc.pid, got, tc.wakes, tc.changed)
		}
	}
}

func TestShares(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		p, n int
		want []int
	}{
		{12, 1, []int{12}},
		{12, 3, []int{4, 4, 4}},
		{12, 5, []int{3, 3, 2, 2, 2}},
		{2, 3, []int{1, 1, 0}},
	} {
		if got := Shares(tt.p, tt.n); !slices.Equal(got, tt.want) {
			t.Errorf("Shares(%d, %d) = %v, want %v", tt.p, tt.n, got, tt.want)
		}
	}
}

// A snapshot that does not parse sees nothing: every notification of an
// owned partition wakes the relay, as before migration 012.
func TestListenerBadSnapshotSeesNothing(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "5:9", "x:9:", "9:5:", "5:9:6,y", "5:9:6,7:"} {
		l := &pgListener{pid: 7, owned: map[int]bool{1: true}}
		l.Claimed(s)
		if !l.wakes(&pgconn.Notification{PID: 9, Payload: "1:1"}) {
			t.Errorf("snapshot %q: a notification of transaction 1 did not wake the relay", s)
		}
	}
	l := &pgListener{pid: 7, owned: map[int]bool{1: true}}
	l.Claimed("5:9:")
	if l.wakes(&pgconn.Notification{PID: 9, Payload: "1:6"}) {
		t.Error(`snapshot "5:9:" (none running): transaction 6 woke the relay`)
	}
}
