package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestDemo builds both binaries and runs the demo as `make demo` does, for
// 9s, on names of the test's own, with both operator episodes on short
// timings, then checks what it printed: the relay stopped cleanly for each
// pause and the backlog grew meanwhile, the poison row was parked dead,
// retried by the demo and received, and the summary's check passed.
func TestDemo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	bin := t.TempDir()
	relayBin := goBuild(ctx, t, bin, "outbox-relay", "github.com/outbox-relay/outbox-relay/cmd/outbox-relay")
	demoBin := goBuild(ctx, t, bin, "outbox-demo", ".")

	name := testenv.UniqueName(t)
	pool := testenv.Pool(t)
	conn := testenv.AMQPConn(t, name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, "drop schema if exists "+pgx.Identifier{name}.Sanitize()+" cascade"); err != nil {
			t.Errorf("drop test schema: %v", err)
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
		for _, x := range []string{name + ".jobs", name + ".broadcast", name + ".audit"} {
			if err := ch.ExchangeDelete(x, false, false); err != nil {
				t.Errorf("delete exchange %s: %v", x, err)
			}
		}
	})

	// Pauses at 3s and 7.5s; the poison row at 0.5s, dead within a second
	// or two with the short back-off, fixed 1s later, retried by the demo
	// 1.5s after that: the episode ends before production stops, even if
	// the first pause delays the row's last attempt.
	cmd := exec.CommandContext(ctx, demoBin, "-relay", relayBin, "-duration", "9s",
		"-table", name+".outbox", "-prefix", name, "-metrics-addr", testenv.FreeAddr(t),
		"-burst-every", "3s", "-burst", "500",
		"-pause-every", "4.5s", "-pause-for", "1.5s",
		"-poison-at", "500ms", "-poison-fix-after", "1s", "-poison-retry-after", "1.5s")
	cmd.Env = append(os.Environ(),
		"OUTBOX_DATABASE_URL="+testenv.DatabaseURL(),
		"OUTBOX_AMQP_URL="+testenv.AMQPURL(),
		"OUTBOX_AMQP_PASSWORD_FILE=",
		"OUTBOX_RETRY_BACKOFF=200ms",
		"OUTBOX_POLL_INTERVAL=250ms",
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := stdout.String()
	t.Logf("demo output:\n%s", out)
	if err != nil {
		t.Fatalf("demo: %v\nstderr:\n%s", err, stderr.String())
	}

	if m := regexp.MustCompile(`received by api: (\d+) of (\d+)\n`).FindStringSubmatch(out); m == nil {
		t.Error("no api count in the summary")
	} else if got, want := atoi(t, m[1]), atoi(t, m[2]); got == 0 || got != want {
		t.Errorf("api received %d of %d events; want all, and some", got, want)
	}
	for i := 1; i <= webInstances; i++ {
		re := regexp.MustCompile(`received by web-` + strconv.Itoa(i) + `: (\d+) of (\d+)\n`)
		if m := re.FindStringSubmatch(out); m == nil {
			t.Errorf("no web-%d count in the summary", i)
		} else if got, want := atoi(t, m[1]), atoi(t, m[2]); got == 0 || got != want {
			t.Errorf("web-%d received %d of %d events; want all, and some", i, got, want)
		}
	}
	for _, want := range []string{
		"rolled back events received: 0\n",
		"rolled back: its event is never sent\n",
		"[api]    burst 1: received all 500 events",
		"OK: every committed event reached its consumers",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !regexp.MustCompile(`\[lag\] +pending=\d+ oldest=\d+ms( \w+=\d+)* published_total=\d+`).MatchString(out) {
		t.Error("no [lag] line with the relay's published_total")
	}

	// The pauses: the relay exits 0 each time, and the table shows the
	// backlog while it is stopped.
	pauses := strings.Count(out, "[demo]   stopping the relay for 1.5s: events pile up in the table, watch the lag rise\n")
	if pauses == 0 {
		t.Error("the relay was never stopped for a pause")
	}
	if got := strings.Count(out, "[demo]   the relay stopped: exit status 0\n"); got != pauses+1 {
		t.Errorf("the relay stopped with exit status 0 %d times; want %d (%d pauses and the end)", got, pauses+1, pauses)
	}
	if got := strings.Count(out, "[demo]   started `outbox-relay run` again"); got != pauses {
		t.Errorf("the relay was started again %d times; want %d", got, pauses)
	}
	if want := fmt.Sprintf("relay: exit status 0 each of the %d times it was stopped\n", pauses+1); !strings.Contains(out, want) {
		t.Errorf("output lacks %q", want)
	}
	if !regexp.MustCompile(`\[lag\] +pending=[1-9]\d* oldest=[1-9]\d*ms.* \(relay stopped\)\n`).MatchString(out) {
		t.Error("no [lag] line with pending rows while the relay was stopped")
	}
	if !strings.Contains(out, "the backlog drained within") {
		t.Error("no [lag] line saying the backlog drained after a restart")
	}

	// The poison row: dead, shown with the commands to use, fixed, retried
	// by the demo (nobody else does here), received.
	deadRe := regexp.MustCompile(`\[ops\] +row (\d+) is dead after 3 attempts: exchange "` + regexp.QuoteMeta(name) +
		`\.audit" does not exist\. Try: OUTBOX_TABLE=` + regexp.QuoteMeta(name) + `\.outbox ` + regexp.QuoteMeta(relayBin) + ` dead list\n`)
	m := deadRe.FindStringSubmatchIndex(out)
	if m == nil {
		t.Fatal("no [ops] line saying the poison row is dead")
	}
	row, rest := out[m[2]:m[3]], out[m[1]:]
	for _, want := range []string{
		"[ops]    the exchange exists now. Retry the row: OUTBOX_TABLE=" + name + ".outbox " + relayBin + " dead retry -all\n",
		"[ops]    retried 1 dead row(s): " + row + "; they are available now\n",
		"[audit]  received audit.job for job ",
	} {
		i := strings.Index(rest, want)
		if i < 0 {
			t.Errorf("after the row was dead, the output lacks %q", want)
			continue
		}
		rest = rest[i+len(want):]
	}
	if !strings.Contains(out, "received by audit: 1 of 1\n") {
		t.Error("the summary does not count the audit event as received")
	}
	if uri, err := amqp.ParseURI(testenv.AMQPURL()); err == nil && uri.Password != "" &&
		strings.Contains(out+stderr.String(), ":"+uri.Password+"@") {
		t.Error("the output shows the AMQP password")
	}
}

// goBuild builds package pkg into dir/name and returns its path.
func goBuild(ctx context.Context, t *testing.T, dir, name, pkg string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", path, pkg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return path
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestParseMetrics(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		text string
		want map[string]float64
	}{
		{"absent", "# HELP go_goroutines x\ngo_goroutines 7\n", map[string]float64{}},
		{"plain", "# TYPE outbox_published_total counter\noutbox_published_total 2030\noutbox_lag_seconds 0.25\n",
			map[string]float64{"outbox_published_total": 2030, "outbox_lag_seconds": 0.25}},
		{"labels summed", "outbox_published_total{a=\"x y\"} 1\noutbox_published_total{a=\"}\"} 2 1700000000000\n",
			map[string]float64{"outbox_published_total": 3}},
		{"prefix is another metric", "outbox_published_total_extra 9\noutbox_lag_seconds_bucket{le=\"1\"} 4\n", map[string]float64{}},
		{"garbage skipped", "outbox_lag_seconds\noutbox_lag_seconds NaNx\noutbox_lag_seconds 1e-3\n",
			map[string]float64{"outbox_lag_seconds": 0.001}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseMetrics(strings.NewReader(tt.text), metricsPublished, metricsLag)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
		})
	}
}

func TestLineWriter(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	w := newPrinter(&buf).lineWriter("relay")
	for _, s := range []string{"one\ntw", "o\r\n\nthr", "ee"} {
		if _, err := w.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	w.flush()
	want := "[relay]  one\n[relay]  two\n[relay]  three\n"
	if buf.String() != want {
		t.Errorf("got %q, want %q", buf.String(), want)
	}
}

func TestLedger(t *testing.T) {
	t.Parallel()
	l := newLedger()
	msg := func() outbox.Message { return outbox.Message{MessageID: outbox.NewMessageID()} }
	started, completed, broadcast, rolled := msg(), msg(), msg(), msg()

	l.enqueued([]outbox.Message{started}, []kind{kindStarted})
	// A delivery may beat the producer's bookkeeping of its commit.
	if r := l.received(consumerAPI, started.MessageID); !r.ours || !r.first {
		t.Errorf("first delivery: %+v", r)
	}
	l.ended([]outbox.Message{started}, true)
	l.enqueued([]outbox.Message{completed, broadcast}, []kind{kindCompleted, kindBroadcast})
	l.ended([]outbox.Message{completed, broadcast}, true)
	l.enqueued([]outbox.Message{rolled}, []kind{kindStarted})
	l.ended([]outbox.Message{rolled}, false)
	if got := l.outstanding(); got != 1+webInstances {
		t.Errorf("outstanding = %d, want %d", got, 1+webInstances)
	}

	l.received(consumerAPI, completed.MessageID)
	if r := l.received(consumerAPI, completed.MessageID); !r.ours || r.first {
		t.Errorf("duplicate: %+v", r)
	}
	for i := 1; i <= webInstances; i++ {
		l.received(webConsumer(i), broadcast.MessageID)
	}
	if r := l.received(consumerAPI, outbox.NewMessageID()); r.ours {
		t.Errorf("unknown id: %+v", r)
	}
	l.received(consumerAPI, rolled.MessageID)

	s := l.snapshot()
	if l.outstanding() != 0 || s.missing != 0 {
		t.Errorf("missing = %d, want 0", s.missing)
	}
	if s.rolledBackReceived != 1 || s.rolledBack != 1 {
		t.Errorf("rolled back %d, received %d; want 1, 1", s.rolledBack, s.rolledBackReceived)
	}
	if s.expected(consumerAPI) != 2 || s.expected(webConsumer(2)) != 1 || s.expected(consumerAudit) != 0 {
		t.Errorf("expected api %d, web-2 %d, audit %d; want 2, 1, 0",
			s.expected(consumerAPI), s.expected(webConsumer(2)), s.expected(consumerAudit))
	}

	// The poison row's event is for the audit service alone.
	audit := msg()
	l.enqueued([]outbox.Message{audit}, []kind{kindAudit})
	l.ended([]outbox.Message{audit}, true)
	if got := l.outstanding(); got != 1 {
		t.Errorf("outstanding with the audit event = %d, want 1", got)
	}
	l.received(consumerAudit, audit.MessageID)
	if s := l.snapshot(); l.outstanding() != 0 || s.expected(consumerAudit) != 1 || s.received[consumerAudit] != 1 || s.expected(consumerAPI) != 2 {
		t.Errorf("after the audit event: outstanding %d, audit %d of %d, api expects %d; want 0, 1 of 1, 2",
			l.outstanding(), s.received[consumerAudit], s.expected(consumerAudit), s.expected(consumerAPI))
	}
	if s.duplicates[consumerAPI] != 1 || s.foreign[consumerAPI] != 1 {
		t.Errorf("duplicates %d, foreign %d; want 1, 1", s.duplicates[consumerAPI], s.foreign[consumerAPI])
	}
}

func TestShellQuote(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ in, want string }{
		{"outbox_demo.outbox", "outbox_demo.outbox"},
		{"bin/outbox-relay", "bin/outbox-relay"},
		{`"My Schema"."events"`, `'"My Schema"."events"'`},
		{"it's", `'it'\''s'`},
		{"", "''"},
	} {
		if got := shellQuote(tt.in); got != tt.want {
			t.Errorf("shellQuote(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
