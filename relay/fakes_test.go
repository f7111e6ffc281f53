package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Fakes of the loop's seams (seams.go), for TestLoop... tests: no server,
// no network. Each records what the loop asked of it in a shared journal,
// so that a test can check the order of calls across seams.

type journal []string

func (j *journal) add(s string) { *j = append(*j, s) }

// fakeClaim is what one claim returns.
type fakeClaim struct {
	rows []Row
	full bool
	err  error
	age  time.Duration // how long ago, by the clock, its transaction began
	// took is how long the claim takes: the clock moves on that much.
	took     time.Duration
	snapshot string // its snapshot
}

type fakeStore struct {
	j         *journal
	clock     *fakeClock  // claims begin at its now, less their age
	claims    []fakeClaim // returned by Claim and Settle(next > 0), in turn; then empty claims
	claimed   int         // claims made
	settleErr error
	settled   [][]Result
	waitErr   error
	armed     []bool // what Arm reports, in turn; then true
	fenceErr  error
	fences    int
	leader    []int32 // SetOwner calls: the pid
	owned     [][]int // SetOwner calls: the partitions
	fenced    [][]int // Fence calls: the partitions
	warmed    int     // Warm calls
}

func (s *fakeStore) next() (*claim, error) {
	s.claimed++
	if len(s.claims) == 0 {
		s.j.add("claim 0")
		return &claim{}, nil
	}
	fc := s.claims[0]
	s.claims = s.claims[1:]
	if fc.err != nil {
		s.j.add("claim error")
		return nil, fc.err
	}
	s.j.add("claim " + ids(fc.rows))
	s.clock.now = s.clock.now.Add(fc.took)
	c := &claim{rows: slices.Clone(fc.rows), full: fc.full, at: s.clock.now.Add(-fc.age), snapshot: fc.snapshot}
	for _, r := range c.rows {
		if !r.deferred {
			c.loaded++
		}
	}
	return c, nil
}

func (s *fakeStore) Claim(context.Context, int) (*claim, error) { return s.next() }

func (s *fakeStore) Settle(_ context.Context, c *claim, results []Result, next int) (settled, *claim, error, error) {
	if s.settleErr != nil {
		s.j.add("settle error")
		return settled{}, nil, s.settleErr, nil
	}
	s.j.add("settle " + ids(c.rows))
	s.settled = append(s.settled, slices.Clone(results))
	var st settled
	for _, r := range results {
		if r.Outcome == Acked {
			st.deleted++
		}
	}
	if next == 0 {
		return st, nil, nil, nil
	}
	nc, err := s.next()
	return st, nc, nil, err
}

func (s *fakeStore) SetWaiting(_ context.Context, w bool) error {
	s.j.add("waiting " + map[bool]string{true: "on", false: "off"}[w])
	return s.waitErr
}

func (s *fakeStore) Arm(context.Context) (bool, error) {
	ok := true
	if len(s.armed) > 0 {
		ok, s.armed = s.armed[0], s.armed[1:]
	}
	s.j.add(map[bool]string{true: "arm", false: "arm: writers in flight"}[ok])
	return ok, s.waitErr
}

func (s *fakeStore) Fence(_ context.Context, _ time.Duration, parts []int) error {
	s.fences++
	s.fenced = append(s.fenced, parts)
	s.j.add(fmt.Sprint("fence ", parts))
	return s.fenceErr
}

func (s *fakeStore) SetOwner(pid int32, owned []int) {
	s.leader = append(s.leader, pid)
	s.owned = append(s.owned, owned)
}

func (s *fakeStore) SetPartitions(int, bool) {}

func (s *fakeStore) Warm(context.Context) { s.warmed++ }

type fakePublisher struct {
	j           *journal
	connected   bool
	connectErrs []error // returned by Connect in turn; then it connects
	startAt     int     // the node StartAt gave
	blocked     bool
	checkErr    error
	refuse      map[int64]bool // rows Check fails
	nack        map[int64]bool // rows Await says the broker nacked; the others are acked
	awaitErr    error          // Await fails so, and the connection is gone, unless rowRefused
	rowRefused  bool
	onAwait     func() // runs as Await begins
	watching    bool
}

func (p *fakePublisher) Connected() bool { return p.connected }

func (p *fakePublisher) Connect(context.Context) error {
	if len(p.connectErrs) > 0 {
		err := p.connectErrs[0]
		p.connectErrs = p.connectErrs[1:]
		return err
	}
	p.connected = true
	return nil
}

func (p *fakePublisher) Close()        { p.connected = false }
func (p *fakePublisher) StartAt(i int) { p.startAt = i }
func (p *fakePublisher) Node() string  { return "broker:5672" }
func (p *fakePublisher) Blocked() bool { return p.blocked }

func (p *fakePublisher) Watch(context.Context) func() {
	p.watching = true
	return func() { p.watching = false }
}

func (p *fakePublisher) Prepare(context.Context, *batch) error {
	if !p.connected {
		return errors.New("not connected to broker")
	}
	return p.checkErr
}

func (p *fakePublisher) Check(b *batch, i int) bool {
	if p.refuse[b.rows[i].ID] {
		b.results[i] = failed(&b.rows[i], ReasonInvalid, errors.New("refused"))
		return false
	}
	return true
}

func (p *fakePublisher) Send(_ context.Context, b *batch) {
	var sent []Row
	for i := range b.rows {
		if b.send[i] {
			sent = append(sent, b.rows[i])
		}
	}
	b.sent = sent
	p.j.add("send " + ids(sent))
}

func (p *fakePublisher) Await(b *batch) error {
	if p.onAwait != nil {
		p.onAwait()
	}
	if p.awaitErr != nil {
		p.connected = p.rowRefused
		return p.awaitErr
	}
	for i := range b.rows {
		if !b.send[i] {
			continue
		}
		if p.nack[b.rows[i].ID] {
			b.results[i] = failed(&b.rows[i], ReasonNack, errors.New("nacked"))
		} else {
			b.results[i] = Result{Row: &b.rows[i], Outcome: Acked, AckedAt: time.Now()}
		}
	}
	return nil
}

func (p *fakePublisher) RowRefused() bool { return p.rowRefused }

// fakeClock does not sleep: it records the sleep and moves on.
type fakeClock struct {
	now    time.Time
	sleeps []time.Duration
}

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	return true
}

// rows returns rows with the given ids; a key "a" after an id (as in
// rows("1a", "2", "3b")) gives it that partition_key.
func rows(specs ...string) []Row {
	var out []Row
	for _, s := range specs {
		var r Row
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			r.ID = r.ID*10 + int64(s[i]-'0')
			i++
		}
		if i < len(s) {
			k := s[i:]
			r.PartitionKey = &k
		}
		r.MessageID = s
		r.Exchange = "ex"
		r.CreatedAt = time.Unix(0, 0)
		out = append(out, r)
	}
	return out
}

// ids lists the ids of rows, as "[1 2 3]".
func ids(rs []Row) string {
	var n []int64
	for _, r := range rs {
		n = append(n, r.ID)
	}
	return fmtIDs(n)
}

func fmtIDs(n []int64) string {
	s := "["
	for i, id := range n {
		if i > 0 {
			s += " "
		}
		s += strconv.FormatInt(id, 10)
	}
	return s + "]"
}
