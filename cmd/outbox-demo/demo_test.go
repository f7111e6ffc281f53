package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestDemo builds both binaries and runs the demo as `make demo` does, on
// names of the test's own and with quick retries, then checks what it
// printed: each step played and the final check passed.
func TestDemo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	bin := t.TempDir()
	relayBin, err := harness.Build(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	demoBin := filepath.Join(bin, "outbox-demo")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", demoBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build outbox-demo: %v\n%s", err, out)
	}

	name := testenv.UniqueName(t)
	pool := testenv.Pool(t)
	conn := testenv.AMQPConn(t, name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, s := range []string{name, name + "_reports"} {
			if _, err := pool.Exec(ctx, "drop schema if exists "+pgx.Identifier{s}.Sanitize()+" cascade"); err != nil {
				t.Errorf("drop test schema %s: %v", s, err)
			}
		}
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("open channel for clean-up: %v", err)
			return
		}
		defer func() { _ = ch.Close() }()
		if _, err := ch.QueueDelete(name+".api", false, false, false); err != nil {
			t.Errorf("delete queue: %v", err)
		}
		for _, x := range []string{name + ".jobs", name + ".audit"} {
			if err := ch.ExchangeDelete(x, false, false); err != nil {
				t.Errorf("delete exchange %s: %v", x, err)
			}
		}
	})

	cmd := exec.CommandContext(ctx, demoBin, "-relay", relayBin,
		"-table", name+".outbox", "-prefix", name, "-metrics-addr", testenv.FreeAddr(t))
	cmd.Env = append(os.Environ(),
		"OUTBOX_DATABASE_URL="+testenv.DatabaseURL(),
		"OUTBOX_AMQP_URL="+testenv.AMQPURL(),
		"OUTBOX_AMQP_PASSWORD_FILE=",
		"OUTBOX_RETRY_BACKOFF=200ms",
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	out := stdout.String()
	t.Logf("demo output:\n%s", out)
	if err != nil {
		t.Fatalf("demo: %v\nstderr:\n%s", err, stderr.String())
	}

	// In order: what each step shows, then the check.
	rest := out
	for _, re := range []string{
		`\[api\] +job \d+ completed \(result=\d+\): pushed [\d.]+ms after COMMIT, no polling`,
		`\[jobs\] +job \d+ failed before COMMIT: its update and its job.completed rolled back together`,
		`\[web-2\] +job \d+ completed -> pushed to the browsers connected to web-2`,
		`\[demo\] +the relay stopped: exit status 0`,
		`\[ops\] +pending +3 \(3 available now\)`,
		`\[demo\] +the 3 events committed while the relay was down arrived`,
		`\[lag\] +the relay's /metrics: outbox_published_total 3, outbox_pending_rows 0, outbox_lag_seconds [\d.]+`,
		`\[ops\] +row (\d+) is dead after 3 attempts`,
		`\[ops\] +\d+ +` + regexp.QuoteMeta(name) + `\.audit +audit\.job +3 .*exchange "` + regexp.QuoteMeta(name) + `\.audit" does not exist`,
		// The relay publishes the revived row as soon as the retry
		// commits: its receipt and the command's own output race.
		`\[ops\] +\$ outbox-relay dead retry \d+`,
		unordered(`\[ops\] +retried 1 dead row\(s\): \d+`, `\[audit\] +received audit\.job`),
		`\[reports\] job (\d+) completed: inbox_claim true -> report written, report.ready enqueued, one transaction committed`,
		`\[reports\] +\.\.\.and it crashes before its ack reaches RabbitMQ`,
		`\[reports\] job \d+ completed, delivered again \(redelivered=true\): inbox_claim false -> skipped and acked, nothing written`,
		`\[reports\] job \d+ completed: inbox_claim true`,
		`\[check\] +api +received (\d+) of the (\d+) committed events for it \(\+\d+ duplicates\), 0 rolled-back`,
		`\[check\] +reports received 2 of the 2 committed events for it \(\+1 duplicates\)`,
		`\[check\] +mailer +received 2 of the 2 committed events for it \(\+0 duplicates\)`,
		`\[check\] +reports: 3 deliveries of 2 events: 2 processed, 1 skipped by the inbox as duplicates \(1 ack lost on purpose\)`,
		`\[check\] +its table: 2 reports of 2 jobs; report.ready committed 2 times, delivered 2 times to the mailer`,
		`\[check\] +the relay exited: exit status 0, exit status 0\n`,
		`\[check\] +OK: every committed event reached every consumer it was for`,
	} {
		end := 0
		for _, re := range strings.Split(re, unorderedSep) {
			loc := regexp.MustCompile(re).FindStringIndex(rest)
			if loc == nil {
				t.Fatalf("after what came before, the output lacks a line matching %s", re)
			}
			end = max(end, loc[1])
		}
		rest = rest[end:]
	}
	for _, c := range consumers {
		m := regexp.MustCompile(`\[check\] +` + c + ` +received (\d+) of the (\d+) committed`).FindStringSubmatch(out)
		if m == nil || m[1] != m[2] || m[1] == "0" {
			t.Errorf("%s: check line %q; want every committed event for it, and some", c, m)
		}
	}
	if n := len(regexp.MustCompile(`\[mailer\] report for job \d+ ready -> one email sent`).FindAllString(out, -1)); n != 2 {
		t.Errorf("the mailer showed %d emails; want one per report, 2", n)
	}
	if uri, err := amqp.ParseURI(testenv.AMQPURL()); err == nil && uri.Password != "" &&
		strings.Contains(out+stderr.String(), ":"+uri.Password+"@") {
		t.Error("the output shows the AMQP password")
	}
}

// TestCheck feeds the ledger and the reports service's counts by hand and
// runs the final check: it fails on a missing delivery or a rolled-back
// one, counts duplicates and leftovers, and passes once everything arrived.
// The reports service's work must have happened once per event.
func TestCheck(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	d := &demo{out: &syncWriter{w: &buf}, ledger: newLedger(), relayExits: []string{"exit status 0"}}
	l := d.ledger
	done, rolled := outbox.NewMessageID(), outbox.NewMessageID()
	l.enqueued(done, []string{"api", "web-2"})
	l.received("api", done) // a delivery may beat the commit's bookkeeping
	l.ended(done, true)
	l.enqueued(rolled, []string{"api"})
	l.ended(rolled, false)
	// Step 4: job.completed delivered twice to reports, whose inbox skipped
	// the second; its one report.ready reached the mailer.
	job, next := outbox.NewMessageID(), outbox.NewMessageID()
	l.enqueued(job, []string{"reports"})
	l.ended(job, true)
	l.received("reports", job)
	l.received("reports", job)
	l.enqueued(next, []string{"mailer"})
	l.ended(next, true)
	l.received("mailer", next)
	d.reports = reportCounts{processed: 1, duplicates: 1, lostAcks: 1, rows: 1, jobs: 1}
	if l.arrived() || d.check() {
		t.Fatalf("check passed with web-2 missing an event:\n%s", buf.String())
	}
	l.received("web-2", done)
	l.received("web-2", done)
	l.received("api", outbox.NewMessageID())
	if !l.arrived() || !d.check() {
		t.Fatalf("check failed with everything delivered:\n%s", buf.String())
	}
	for _, want := range []string{
		"web-2   received 1 of the 1 committed events for it (+1 duplicates), 0 rolled-back",
		"reports received 1 of the 1 committed events for it (+1 duplicates), 0 rolled-back",
		"reports: 2 deliveries of 1 events: 1 processed, 1 skipped by the inbox as duplicates (1 ack lost on purpose);",
		"its table: 1 reports of 1 jobs; report.ready committed 1 times, delivered 1 times to the mailer",
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, buf.String())
		}
	}
	// Without the inbox, the duplicate would have been handled again.
	for _, tc := range []struct {
		stats reportCounts
		want  string
	}{
		{reportCounts{processed: 2, lostAcks: 1, rows: 2, jobs: 1}, "FAIL: reports skipped 0 duplicates; 1 were delivered after 1 lost acks; reports did the work of 1 events 2 times (2 reports of 1 jobs, 1 report.ready)"},
		{reportCounts{processed: 1, lostAcks: 0, rows: 1, jobs: 1}, "FAIL: reports skipped 0 duplicates; 1 were delivered after 0 lost acks"},
	} {
		d.reports = tc.stats
		buf.Reset()
		if d.check() || !strings.Contains(buf.String(), tc.want) {
			t.Errorf("check passed, or said otherwise, with %+v:\n%s", tc.stats, buf.String())
		}
	}
	d.reports = reportCounts{processed: 1, duplicates: 1, lostAcks: 1, rows: 1, jobs: 1}
	l.received("mailer", next)
	buf.Reset()
	if d.check() || !strings.Contains(buf.String(), "FAIL: the mailer received 1 report.ready events twice") {
		t.Errorf("check passed, or said otherwise, with a report.ready delivered twice:\n%s", buf.String())
	}
	l.events[next].got["mailer"] = 1
	l.received("api", rolled)
	buf.Reset()
	if d.check() || !strings.Contains(buf.String(), "FAIL: api missed 0 committed and received 1 rolled-back events") {
		t.Errorf("check passed, or said otherwise, with a rolled-back event delivered:\n%s", buf.String())
	}
}

// unorderedSep joins patterns that unordered says may match in any order.
const unorderedSep = "\x00"

// unordered is one entry of the demo's expected sequence made of several
// patterns, each of which must match after the entries before it, in any
// order among themselves; the sequence goes on after the last of them.
func unordered(res ...string) string { return strings.Join(res, unorderedSep) }
