package main

import (
	"fmt"
	"strings"
)

// intro says what is about to happen, once.
func (d *demo) intro(relayPath string) {
	n, p := d.names, d.out
	p.printf("demo", "outbox table %s, relay %s", n.table, relayPath)
	p.printf("demo", "jobs:   a service that changes its table and enqueues the event in the SAME transaction")
	p.printf("demo", "api:    consumes job events from durable queue %s; events are pushed, nobody polls", n.apiQueue)
	p.printf("demo", "web-N:  instances of a scaled-out server, one queue each on fanout exchange %s: all see every event", n.broadcast)
	if d.opts.metricsAddr != "" {
		p.printf("demo", "lag:    every %s, the backlog as the table shows it (pending, oldest) and as the relay's /metrics do", lagInterval)
	} else {
		p.printf("demo", "lag:    every %s, the backlog as the table shows it (pending, oldest)", lagInterval)
	}
	if d.opts.burstEvery > 0 {
		p.printf("demo", "        every %s, a burst of %d events in one transaction; [lag] follows it closely", d.opts.burstEvery, d.opts.burstSize)
	}
	if d.opts.pauseEvery > 0 {
		p.printf("demo", "ops:    every %s (the first after %s), the relay is stopped for %s and started again: [lag] shows the backlog rise, then drain",
			d.opts.pauseEvery, d.opts.pauseEvery*2/3, d.opts.pauseFor)
	}
	if d.opts.poisonAt > 0 {
		p.printf("demo", "        after %s, jobs sends one %s event to exchange %s, which does not exist yet: [ops] shows how to find the dead row and retry it",
			d.opts.poisonAt, keyAudit, n.audit)
	}
	if d.opts.duration > 0 {
		p.printf("demo", "running for %s", d.opts.duration)
	} else {
		p.printf("demo", "press Ctrl-C to stop")
	}
}

// summary prints what was committed and received and reports whether the
// check passed: every committed event reached each of its consumers, no
// rolled-back event reached any, and the relay exited cleanly.
func (d *demo) summary() bool {
	s := d.ledger.snapshot()
	p := d.out
	if s.committedTotal() == 0 && s.rolledBack == 0 {
		return d.relay == nil || d.relay.cleanExit()
	}
	p.printf("demo", "summary")
	audit := ""
	if s.committed[kindAudit] > 0 {
		audit = fmt.Sprintf(", %d %s", s.committed[kindAudit], keyAudit)
	}
	p.printf("demo", "  events committed: %d (%d job.started, %d job.completed, %d broadcast, %d job.bulk in %s%s)",
		s.committedTotal(), s.committed[kindStarted], s.committed[kindCompleted], s.committed[kindBroadcast], s.committed[kindBulk], plural(s.bursts, "burst"), audit)
	p.printf("demo", "  events rolled back: %d", s.rolledBack)
	for c := range consumerCount {
		if c == consumerAudit && d.audit == nil {
			continue // no poison episode, no audit service
		}
		line := fmt.Sprintf("  received by %s: %d of %d", consumerName(c), s.received[c], s.expected(c))
		if s.duplicates[c] > 0 {
			line += fmt.Sprintf(" (+%d duplicates, told apart by message_id)", s.duplicates[c])
		}
		if s.foreign[c] > 0 {
			line += fmt.Sprintf(" (+%d left over from an earlier run)", s.foreign[c])
		}
		p.printf("demo", "%s", line)
	}
	p.printf("demo", "  rolled back events received: %d", s.rolledBackReceived)
	var failures []string
	if s.missing > 0 {
		failures = append(failures, fmt.Sprintf("%d deliveries of committed events are missing", s.missing))
	}
	if s.rolledBackReceived > 0 {
		failures = append(failures, "rolled-back events were delivered")
	}
	if d.relay != nil {
		p.printf("demo", "  relay: %s", d.relay.exitStatus())
		if !d.relay.cleanExit() {
			failures = append(failures, "the relay did not exit cleanly")
		}
	}
	ok := len(failures) == 0
	if ok {
		p.printf("demo", "OK: every committed event reached its consumers; no rolled-back event did")
	} else {
		p.printf("demo", "FAIL: %s", strings.Join(failures, "; "))
	}
	return ok
}
