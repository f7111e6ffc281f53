package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// newRelay prepares the relay binary at path, its log shown as [relay]. It
// inherits the demo's environment (the URLs, never on its command line where
// ps shows them), plus the demo's table and metrics address, and quick
// retries unless set, so that the poison row is parked dead within seconds,
// and the reports service's inbox table for `outbox-relay inbox migrate`.
func (d *demo) newRelay(path string) error {
	bin, err := harness.FindRelay(path)
	if err != nil {
		return fmt.Errorf("-relay: %w", err)
	}
	d.relay = harness.Relay{Bin: bin, Output: d.out, OutputPrefix: "[relay]  ", Env: map[string]string{
		"OUTBOX_TABLE": d.table.String(), "OUTBOX_METRICS_ADDR": d.metricsAddr, "OUTBOX_LOG_FORMAT": "text",
		"OUTBOX_INBOX_TABLE":   d.reportsInbox.String(), // for `inbox migrate`
		"OUTBOX_MAX_ATTEMPTS":  cmp.Or(os.Getenv("OUTBOX_MAX_ATTEMPTS"), "3"),
		"OUTBOX_RETRY_BACKOFF": cmp.Or(os.Getenv("OUTBOX_RETRY_BACKOFF"), "1s"),
	}}
	d.say("demo", "outbox table %s, relay %s; its log shows as [relay]", d.table, bin)
	return nil
}

// startRelay starts `outbox-relay run` and waits until it leads the table
// (outbox_leader 1 on its /metrics). Only stopRelay stops it, not ctx: the
// demo stops it last, once the consumers have what it published.
func (d *demo) startRelay(ctx context.Context) error {
	p, err := d.relay.Start(context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	d.proc = p
	d.say("demo", "started `outbox-relay run` (pid %d)", p.Pid())
	err = harness.WaitUntil(ctx, waitTimeout, "the relay to lead", func() bool {
		v, ok := p.Metric("outbox_leader")
		return ok && v == 1 || p.Exited()
	})
	if p.Exited() {
		return fmt.Errorf("the relay exited: %w", p.Err())
	}
	return err
}

// stopRelay sends SIGTERM to the running relay, if any, and records how it
// exited: with status 0 once it has settled what it sent.
func (d *demo) stopRelay(why string) error {
	if d.proc == nil {
		return nil
	}
	d.say("demo", "%s: SIGTERM to the relay", why)
	err := d.proc.Stop()
	st := d.proc.State().String() // Stop returns once the process is gone
	d.relayExits, d.proc = append(d.relayExits, st), nil
	d.say("demo", "the relay stopped: %s", st)
	return err
}

// relayCommand runs `outbox-relay args...` as an operator would, its
// output shown as [who].
func (d *demo) relayCommand(ctx context.Context, who string, args ...string) error {
	d.say(who, "$ outbox-relay %s", strings.Join(args, " "))
	r := d.relay
	r.OutputPrefix = fmt.Sprintf("%-8s ", "["+who+"]")
	_, err := r.Command(ctx, args...)
	return err
}

// reportLag prints the relay's view from its /metrics once it has counted
// the events it published and its gauges show no backlog (it counts when it
// deletes the rows, and refreshes the gauges when it goes idle: a moment
// after the consumers may have the events).
func (d *demo) reportLag(ctx context.Context, published float64) error {
	var m harness.Metrics
	if err := harness.WaitUntil(ctx, waitTimeout, "the relay's metrics to show it published and idle", func() bool {
		sctx, cancel := context.WithTimeout(ctx, harness.ScrapeTimeout)
		defer cancel()
		m, _ = d.proc.Metrics(sctx)
		n, _ := m.Value("outbox_published_total")
		pending, ok := m.Value("outbox_pending_rows")
		return n >= published && ok && pending == 0
	}); err != nil {
		return err
	}
	v := func(series string) float64 { x, _ := m.Value(series); return x }
	d.say("lag", "the relay's /metrics: outbox_published_total %.0f, outbox_pending_rows 0, outbox_lag_seconds %.3f, and",
		v("outbox_published_total"), v("outbox_lag_seconds"))
	d.say("lag", "   outbox_delivery_latency_seconds (row created to broker ack) %.0fms on average: they waited for the relay",
		1000*v("outbox_delivery_latency_seconds_sum")/max(v("outbox_delivery_latency_seconds_count"), 1))
	return nil
}
