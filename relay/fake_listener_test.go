package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// fakeListener is the LISTEN session of a relay in a group of its own
// making: others are the other members, foreign the partitions they hold;
// without lead, every partition this relay does not hold is another's.
type fakeListener struct {
	j           *journal
	clock       *fakeClock // a wait with no notification lasts its timeout
	connected   bool
	connectErrs []error
	pid         int32
	lead        bool  // partitions not foreign may be taken
	leadErr     error // what Look and Take fail with; the session is then closed
	partitions  int   // the table's P (recorded, as by migration 007); 0 is 1
	others      []int32
	foreign     map[int]int32
	held        map[int]bool
	member      bool
	asleep      bool
	broker      string
	owned       []int
	claimed     string // the snapshot Claimed was given last
	changed     bool
	waits       []time.Duration
	waitErr     error
	pingErr     error
}

func (l *fakeListener) Connected() bool { return l.connected }

func (l *fakeListener) Connect(context.Context) error {
	if len(l.connectErrs) > 0 {
		err := l.connectErrs[0]
		l.connectErrs = l.connectErrs[1:]
		return err
	}
	l.connected, l.pid, l.held, l.member, l.asleep = true, 4242, nil, false, false // a new session holds no lock
	return nil
}

func (l *fakeListener) Close(context.Context) {
	l.connected, l.pid, l.held, l.member, l.asleep, l.owned = false, 0, nil, false, false, nil
}
func (l *fakeListener) PID() int32 { return l.pid }

func (l *fakeListener) Look(context.Context) (groupView, error) {
	if l.leadErr != nil {
		l.Close(context.Background())
		return groupView{}, l.leadErr
	}
	p := max(1, l.partitions)
	v := groupView{partitions: p, settings: true, owners: make([]int32, p)}
	v.relays = append(slices.Clone(l.others), l.pid)
	v.members = slices.Clone(l.others)
	if l.member {
		v.members = append(v.members, l.pid)
	}
	slices.Sort(v.relays)
	slices.Sort(v.members)
	for q := range p {
		switch {
		case l.held[q]:
			v.owners[q] = l.pid
		case l.foreign[q] != 0:
			v.owners[q] = l.foreign[q]
		case !l.lead:
			v.owners[q] = 1
		}
	}
	return v, nil
}

func (l *fakeListener) Take(_ context.Context, p int) (bool, error) {
	if l.leadErr != nil {
		l.Close(context.Background())
		return false, l.leadErr
	}
	if !l.lead || l.foreign[p] != 0 || l.held[p] {
		return false, nil
	}
	if l.held == nil {
		l.held = map[int]bool{}
	}
	l.held[p] = true
	l.j.add(fmt.Sprint("take ", p))
	return true, nil
}

func (l *fakeListener) Release(_ context.Context, p int) error {
	delete(l.held, p)
	l.j.add(fmt.Sprint("release ", p))
	return nil
}

func (l *fakeListener) Member(_ context.Context, in bool) error {
	l.member = in
	l.j.add(fmt.Sprint("member ", in))
	return nil
}

func (l *fakeListener) SetBroker(_ context.Context, node string) error {
	l.broker = node
	return nil
}

func (l *fakeListener) Sleeper(_ context.Context, asleep bool) error {
	l.asleep = asleep
	return nil
}

func (l *fakeListener) SetOwned(_ context.Context, owned []int) error {
	l.owned = owned
	if !l.connected && len(owned) > 0 {
		return errors.New("listener not connected")
	}
	return nil
}

func (l *fakeListener) Claimed(s string) { l.claimed = s }

func (l *fakeListener) GroupChanged() bool {
	c := l.changed
	l.changed = false
	return c
}

func (l *fakeListener) Wait(_ context.Context, d time.Duration) (bool, error) {
	l.waits = append(l.waits, d)
	l.j.add("wait " + d.String())
	if l.clock != nil {
		l.clock.now = l.clock.now.Add(d)
	}
	if l.waitErr != nil {
		l.connected = false
		return false, l.waitErr
	}
	return false, nil
}

func (l *fakeListener) Ping(context.Context) error {
	l.j.add("ping")
	if l.pingErr != nil {
		l.connected = false
	}
	return l.pingErr
}
