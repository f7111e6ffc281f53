package main

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// The consumers, by the name their lines carry.
var (
	webInstances = []string{"web-1", "web-2", "web-3"}
	consumers    = append(append([]string{"api"}, webInstances...), "audit", "reports", "mailer")
)

// ledger records every event the demo enqueues, who it is for and how its
// transaction ended, and every delivery each consumer sees, by message id:
// the final check compares the two. An event is entered before its
// transaction ends, so that no delivery can beat it there.
type ledger struct {
	mu     sync.Mutex
	events map[outbox.MessageID]*event
}

type event struct {
	to        []string       // the consumers it is for
	committed bool           // its transaction committed
	ended     bool           // its transaction committed or rolled back
	got       map[string]int // deliveries per consumer
}

func newLedger() *ledger { return &ledger{events: map[outbox.MessageID]*event{}} }

// enqueued enters an event about to be written in a transaction.
func (l *ledger) enqueued(id outbox.MessageID, to []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events[id] = &event{to: to, got: map[string]int{}}
}

// ended records how the transaction that wrote id ended.
func (l *ledger) ended(id outbox.MessageID, committed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events[id].committed, l.events[id].ended = committed, true
}

// received records that consumer c got the event id, and reports whether
// it is the first time. The demo clears what an earlier run left before it
// starts: an event it does not know is no concern of the check.
func (l *ledger) received(c string, id outbox.MessageID) (first bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.events[id]; e != nil {
		e.got[c]++
		return e.got[c] == 1
	}
	return false
}

// arrived reports whether every consumer that the events ids are for has
// them; with no ids, every committed event.
func (l *ledger) arrived(ids ...outbox.MessageID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(ids) == 0 {
		for id, e := range l.events {
			if e.committed {
				ids = append(ids, id)
			}
		}
	}
	for _, id := range ids {
		for _, c := range l.events[id].to {
			if l.events[id].got[c] == 0 {
				return false
			}
		}
	}
	return true
}

// check prints the summary and reports whether the demo kept its promises:
// every committed event reached every consumer it was for, no rolled-back
// event reached anyone, and the relay exited 0 each time it was stopped.
// Duplicates are allowed (delivery is at-least-once) and counted, but the
// reports service did each job's work once (checkReports).
func (d *demo) check() bool {
	l := d.ledger
	l.mu.Lock()
	defer l.mu.Unlock()
	type tally struct{ want, got, dups, bad int }
	per := map[string]*tally{}
	for _, c := range consumers {
		per[c] = &tally{}
	}
	var committed, rolledBack int
	for _, e := range l.events {
		switch {
		case e.committed:
			committed++
			for _, c := range e.to {
				per[c].want++
			}
			for c, n := range e.got {
				per[c].got, per[c].dups = per[c].got+1, per[c].dups+n-1
			}
		case e.ended:
			rolledBack++
			for c := range e.got {
				per[c].bad++
			}
		}
	}
	d.say("check", "events committed: %d; rolled back: %d", committed, rolledBack)
	var failures []string
	for _, c := range consumers {
		t := per[c]
		d.say("check", "%-7s received %d of the %d committed events for it (+%d duplicates), %d rolled-back", c, t.got, t.want, t.dups, t.bad)
		if t.got < t.want || t.bad > 0 {
			failures = append(failures, fmt.Sprintf("%s missed %d committed and received %d rolled-back events", c, t.want-t.got, t.bad))
		}
	}
	failures = append(failures, d.checkReports(per["reports"].got, per["reports"].dups, per["mailer"].want, per["mailer"].dups)...)
	d.say("check", "the relay exited: %s", strings.Join(d.relayExits, ", "))
	if len(d.relayExits) == 0 || slices.ContainsFunc(d.relayExits, func(s string) bool { return s != "exit status 0" }) {
		failures = append(failures, "the relay did not exit 0 each time it was stopped")
	}
	if committed == 0 {
		failures = append(failures, "nothing was committed")
	}
	if len(failures) > 0 {
		d.say("check", "FAIL: %s", strings.Join(failures, "; "))
		return false
	}
	d.say("check", "OK: every committed event reached every consumer it was for; no rolled-back event arrived;")
	d.say("check", "   the reports service skipped every duplicate and did each job's work, and enqueued its report.ready, once")
	return true
}

// checkReports prints what the reports service did with the events it
// received (events, of which dups duplicate deliveries) and returns its
// broken promises: every duplicate skipped by its inbox, each event's work
// done once (one report per job, one report.ready per event, which the
// mailer received once: followUps events, dupMails duplicate deliveries),
// and at least one duplicate shown.
func (d *demo) checkReports(events, dups, followUps, dupMails int) []string {
	d.reportsMu.Lock()
	defer d.reportsMu.Unlock()
	s := d.reports
	d.say("check", "reports: %d deliveries of %d events: %d processed, %d skipped by the inbox as duplicates (%d ack lost on purpose);",
		events+dups, events, s.processed, s.duplicates, s.lostAcks)
	d.say("check", "   its table: %d reports of %d jobs; report.ready committed %d times, delivered %d times to the mailer",
		s.rows, s.jobs, followUps, followUps+dupMails)
	var failures []string
	if s.lostAcks == 0 || s.duplicates != dups || s.duplicates < s.lostAcks {
		failures = append(failures, fmt.Sprintf("reports skipped %d duplicates; %d were delivered after %d lost acks", s.duplicates, dups, s.lostAcks))
	}
	if s.processed != events || s.rows != events || s.jobs != events || followUps != events {
		failures = append(failures, fmt.Sprintf("reports did the work of %d events %d times (%d reports of %d jobs, %d report.ready)",
			events, s.processed, s.rows, s.jobs, followUps))
	}
	if dupMails > 0 {
		failures = append(failures, fmt.Sprintf("the mailer received %d report.ready events twice", dupMails))
	}
	return failures
}
