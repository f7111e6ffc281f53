package main

import (
	"math/bits"
	"strconv"
	"sync"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// consumerID numbers the demo's consumers; it is also their bit in a mask.
type consumerID int

const (
	consumerAPI   consumerID = 0 // then web-1 .. web-N
	webInstances             = 3
	consumerAudit            = consumerID(1 + webInstances) // the poison episode's consumer
	consumerCount            = consumerAudit + 1
)

// webConsumer is web instance i, from 1 to webInstances.
func webConsumer(i int) consumerID { return consumerID(i) }

// consumerName is the prefix of c's lines, e.g. "api", "web-2" or "audit".
func consumerName(c consumerID) string {
	switch c {
	case consumerAPI:
		return "api"
	case consumerAudit:
		return "audit"
	}
	return "web-" + strconv.Itoa(int(c))
}

// kind is what an event announces, which decides who must receive it.
type kind uint8

const (
	kindStarted   kind = iota // job.started on the jobs exchange
	kindCompleted             // job.completed on the jobs exchange
	kindBroadcast             // job.completed on the broadcast exchange
	kindBulk                  // job.bulk on the jobs exchange, in bursts
	kindAudit                 // audit.job on the audit exchange: the poison row
	kindCount
)

// targets is the mask of consumers that must receive an event of kind k.
func (k kind) targets() uint8 {
	switch k {
	case kindBroadcast:
		return uint8(1<<(webInstances+1)-1) &^ 1 // every web instance
	case kindAudit:
		return 1 << consumerAudit
	}
	return 1 << consumerAPI
}

type state uint8

const (
	stateInFlight   state = iota // enqueued in a transaction not yet ended
	stateCommitted               // must arrive
	stateRolledBack              // must never arrive
)

type entry struct {
	kind  kind
	state state
	got   uint8 // consumers that received it
}

// ledger records every event the demo enqueues and every delivery its
// consumers see, keyed by message id, so that the summary can say what was
// lost or should not have come. An event costs about 50 bytes: an hour of
// the default demo (about 370,000 events) holds some 20 MB.
//
// Producers register an event before its transaction ends, so a delivery
// always finds it, however fast the relay is.
type ledger struct {
	mu      sync.Mutex
	entries map[outbox.MessageID]*entry
	s       tally
	// changed gets a value (if it has room) whenever a delivery arrives.
	changed chan struct{}
}

// tally is the ledger's counts.
type tally struct {
	committed          [kindCount]int
	bursts             int
	rolledBack         int
	received           [consumerCount]int // distinct events of this run
	duplicates         [consumerCount]int // redeliveries (at-least-once)
	foreign            [consumerCount]int // events of an earlier run
	rolledBackReceived int
	missing            int // committed events times consumers still waiting for them
}

// committedTotal is the number of committed events of every kind.
func (t *tally) committedTotal() int {
	n := 0
	for _, c := range t.committed {
		n += c
	}
	return n
}

// expected is how many events consumer c must receive.
func (t *tally) expected(c consumerID) int {
	n := 0
	for k := range kindCount {
		if k.targets()&(1<<c) != 0 {
			n += t.committed[k]
		}
	}
	return n
}

// newLedger returns an empty ledger.
func newLedger() *ledger {
	return &ledger{entries: make(map[outbox.MessageID]*entry), changed: make(chan struct{}, 1)}
}

// enqueued registers events about to be written in a transaction.
func (l *ledger) enqueued(msgs []outbox.Message, kinds []kind) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, m := range msgs {
		l.entries[m.MessageID] = &entry{kind: kinds[i]}
	}
}

// ended records the outcome of the transaction that enqueued msgs.
func (l *ledger) ended(msgs []outbox.Message, committed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if committed && len(msgs) > 0 && l.entries[msgs[0].MessageID].kind == kindBulk {
		l.s.bursts++
	}
	for _, m := range msgs {
		e := l.entries[m.MessageID]
		if committed {
			e.state = stateCommitted
			l.s.committed[e.kind]++
			l.s.missing += bits.OnesCount8(e.kind.targets() &^ e.got)
		} else {
			e.state = stateRolledBack
			l.s.rolledBack++
			l.s.rolledBackReceived += bits.OnesCount8(e.got)
		}
	}
}

// receipt says what a delivery was.
type receipt struct {
	ours  bool // enqueued by this run
	first bool // the first time c got it
}

// received records that consumer c got the event with message id id.
func (l *ledger) received(c consumerID, id outbox.MessageID) receipt {
	l.mu.Lock()
	defer l.mu.Unlock()
	defer func() {
		select {
		case l.changed <- struct{}{}:
		default:
		}
	}()
	e, ok := l.entries[id]
	if !ok {
		l.s.foreign[c]++
		return receipt{}
	}
	bit := uint8(1) << c
	if e.got&bit != 0 {
		l.s.duplicates[c]++
		return receipt{ours: true}
	}
	e.got |= bit
	l.s.received[c]++
	switch {
	case e.state == stateCommitted && e.kind.targets()&bit != 0:
		l.s.missing--
	case e.state == stateRolledBack:
		l.s.rolledBackReceived++
	}
	return receipt{ours: true, first: true}
}

// outstanding is the number of deliveries of committed events still missing.
func (l *ledger) outstanding() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.s.missing
}

// snapshot returns a copy of the counts.
func (l *ledger) snapshot() tally {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.s
}
