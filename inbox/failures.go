package inbox

import "sync"

// failureMemory bounds how many message ids a Consumer remembers failures
// of. Past it, an arbitrary id is forgotten: that message gets up to
// MaxFailures more tries, which is the price of bounded memory.
const failureMemory = 10_000

// failureCounts counts handler failures per message_id. It lives in memory,
// outside the transactions it counts, which roll back: a restart of the
// process forgets the counts, and each replica counts its own. For a bound
// that survives both, use a quorum queue's delivery-limit (see the package
// documentation).
type failureCounts struct {
	mu  sync.Mutex
	max int
	n   map[string]int
}

func newFailureCounts(max int) *failureCounts {
	return &failureCounts{max: max, n: make(map[string]int)}
}

// add counts one more failure of id and returns its count.
func (f *failureCounts) add(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.n[id]; !ok && len(f.n) >= f.max {
		for old := range f.n { // map order is random: evict any one
			delete(f.n, old)
			break
		}
	}
	f.n[id]++
	return f.n[id]
}

// forget drops id's count: it succeeded or was given up on.
func (f *failureCounts) forget(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.n, id)
}
