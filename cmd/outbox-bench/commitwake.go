package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// commitWork are the times a commit scenario's writers work after their
// enqueue, before they commit, taken in turn.
var commitWork = []time.Duration{0, 20 * time.Millisecond, 200 * time.Millisecond}

// commitPoll is the relay's OUTBOX_POLL_INTERVAL in the commit scenario:
// long, so that an event that waits for the poll shows.
const commitPoll = 5 * time.Second

// commitWake measures what services written as they are see: events
// enqueued early in their transaction, which then works for D ms and
// commits, 50-400 ms apart, D = 0, 20 and 200 ms interleaved, with the
// relay polling only every 5s. Commit → consumer receipt per D, and the
// relay's transactions per event.
func (b *bench) commitWake(ctx context.Context, rep *report) error {
	lats := make([]*latencies, len(commitWork))
	for i := range lats {
		lats[i] = newLatencies()
	}
	// The body names the work, for the receipt to find its latencies.
	c, err := b.consume(ctx, func(d amqp.Delivery) {
		for i, w := range commitWork {
			if strings.HasPrefix(string(d.Body), w.String()+" ") {
				lats[i].receive(d)
			}
		}
	})
	if err != nil {
		return err
	}
	defer c.close()
	r := b.relayOn(b.table, "")
	r.Env["OUTBOX_POLL_INTERVAL"] = commitPoll.String()
	p, err := r.Start(ctx)
	if err != nil {
		return err
	}
	defer p.Stop()
	if err := b.waitIdle(ctx); err != nil {
		return err
	}
	before, err := b.quietXacts(ctx, harness.Name)
	if err != nil {
		return err
	}
	pool, err := b.pool(ctx, 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	events := b.o.commitEvents * len(commitWork)
	for i := range events {
		time.Sleep(50*time.Millisecond + rand.N(350*time.Millisecond))
		k := i % len(commitWork)
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		var id string
		err = tx.QueryRow(ctx, "insert into "+b.table.Ident()+" (routing_key, payload) values ($1, $2) returning message_id::text",
			b.queue, []byte(commitWork[k].String()+" "+string(b.payload))).Scan(&id)
		if err == nil {
			time.Sleep(commitWork[k])
			err = tx.Commit(ctx)
		}
		if err != nil {
			_ = tx.Rollback(ctx)
			return fmt.Errorf("commit scenario: %w", err)
		}
		lats[k].commit(id, time.Now())
	}
	if err := c.waitFor(ctx, int64(events), 30*time.Second); err != nil {
		return fmt.Errorf("commit scenario: %w", err)
	}
	pool.Close()
	after, err := b.quietXacts(ctx, harness.Name)
	if err != nil {
		return err
	}

	var p95zero time.Duration
	for i, w := range commitWork {
		got := lats[i].take()
		if len(got) == 0 {
			return fmt.Errorf("commit scenario: no latency paired for D = %s", w)
		}
		p95, p99, top := quantile(got, 0.95), quantile(got, 0.99), got[len(got)-1]
		what := fmt.Sprintf("commit wake-up, %s of work after enqueue", w)
		figures := fmt.Sprintf("p50 %s p95 %s p99 %s max %s", ms(quantile(got, 0.5)), ms(p95), ms(p99), ms(top))
		ref := fmt.Sprintf("%d events 50-400ms apart, poll %s", len(got), commitPoll)
		if i == 0 {
			p95zero = p95
			rep.add(what, figures, ref, "", "p99 <= 10ms, max <= 250ms", p99 <= 10*time.Millisecond && top <= 250*time.Millisecond)
			continue
		}
		bound := max(10*time.Millisecond, p95zero*3/2)
		rep.add(what, figures, ref, "", fmt.Sprintf("p95 <= %s, max <= 250ms", ms(bound)),
			p95 <= bound && top <= 250*time.Millisecond)
	}
	// The writers' own transactions: one each.
	per := float64(after-before-int64(events)) / float64(events)
	rep.add("  relay transactions per event", fmt.Sprintf("%.1f", per), "sparse events, woken at commit", "", "<= 10", per <= 10)
	return nil
}
