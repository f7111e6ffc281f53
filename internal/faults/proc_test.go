//go:build faults

package faults

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// relayProc is one running `outbox-relay run` process of a scenario, with
// a name for the logs: relay-1, relay-2, ...
type relayProc struct {
	*harness.Process
	name string
}

// startRelay starts the binary with exactly env (plus PATH and HOME) and
// kills it at the end of the test if the test has not. The relay's logs are
// shown when the test fails.
func startRelay(t *testing.T, name string, env map[string]string) *relayProc {
	t.Helper()
	r := &harness.Relay{Bin: bin, Isolated: true, Env: map[string]string{
		// On SIGQUIT (see quit) the runtime prints the stacks of running
		// goroutines too, not only of parked ones.
		"GOTRACEBACK": "crash",
	}}
	for k, v := range env {
		r.Env[k] = v
	}
	p, err := r.Start(context.Background())
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("%s (pid %d) logs:\n%s", name, p.Pid(), p.Output())
		}
	})
	return &relayProc{Process: p, name: name}
}

// quit sends SIGQUIT, which makes the Go runtime print every goroutine's
// stack to the log and exit, and waits up to timeout for the exit.
func (p *relayProc) quit(timeout time.Duration) {
	_ = p.Signal(syscall.SIGQUIT)
	p.Wait(timeout)
}

// threadStacks appends the stacks of the process's threads, read with
// gdb, to its log; nothing if gdb is not installed.
func (p *relayProc) threadStacks() {
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, gdb, "-p", strconv.Itoa(p.Pid()), "-batch", "-nx",
		"-ex", "thread apply all bt 12").CombinedOutput()
	var keep []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Thread ") || strings.HasPrefix(line, "#") {
			keep = append(keep, line)
		}
	}
	if len(keep) == 0 {
		keep = append(keep, fmt.Sprintf("gdb: %v", err))
	}
	fmt.Fprintf(p.Output(), "--- threads (gdb) ---\n%s\n--- end of threads ---\n", strings.Join(keep, "\n"))
}

// terminate sends SIGTERM and waits up to timeout for the exit code; false
// if the process did not exit in time.
func (p *relayProc) terminate(timeout time.Duration) (code int, exited bool) {
	_ = p.Signal(syscall.SIGTERM)
	if !p.Wait(timeout) {
		return 0, false
	}
	return p.ExitCode(), true
}

// isLeader reports whether the relay's /metrics shows outbox_leader 1.
func (p *relayProc) isLeader() bool {
	v, ok := p.Metric("outbox_leader")
	return ok && v == 1
}

// published returns outbox_published_total, -1 when unreadable.
func (p *relayProc) published() float64 {
	v, ok := p.Metric("outbox_published_total")
	if !ok {
		return -1
	}
	return v
}

// dbPort and amqpPort are the ports of the test servers, to which the
// relay's sockets are connected.
func dbPort(t *testing.T) int   { return urlPort(t, testenv.DatabaseURL(), 5432) }
func amqpPort(t *testing.T) int { return urlPort(t, testenv.AMQPURL(), 5672) }

func urlPort(t *testing.T, raw string, def int) int {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse server URL: %v", err)
	}
	if u.Port() == "" {
		return def
	}
	n, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("server URL port: %v", err)
	}
	return n
}

// runBin runs a short command of the binary (status, dead, ...) with
// exactly env (plus PATH and HOME) and returns its stdout.
func runBin(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := (&harness.Relay{Bin: bin, Isolated: true, Env: env}).Command(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// must fails the test on a broker command's error.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
