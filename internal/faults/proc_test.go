//go:build faults

package faults

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// relayProc is one running `outbox-relay run` process.
type relayProc struct {
	name        string // for logs: relay-1, relay-2, ...
	metricsAddr string
	cmd         *exec.Cmd
	logs        *lockedBuffer
	done        chan struct{}
	err         error
}

// startRelay starts the binary with exactly env (plus PATH and HOME) and
// kills it at the end of the test if the test has not. The relay's logs are
// shown when the test fails.
func startRelay(t *testing.T, name string, env map[string]string) *relayProc {
	t.Helper()
	p := &relayProc{name: name, metricsAddr: env["OUTBOX_METRICS_ADDR"], logs: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, "run")
	// GOTRACEBACK=crash: on SIGQUIT (see quit) the runtime prints the
	// stacks of running goroutines too, not only of parked ones.
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "GOTRACEBACK=crash"}
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s (pid %d) logs:\n%s", p.name, p.cmd.Process.Pid, p.logs.String())
		}
	})
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *relayProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// quit sends SIGQUIT, which makes the Go runtime print every goroutine's
// stack to the log and exit, and waits up to timeout for the exit.
func (p *relayProc) quit(timeout time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.done:
	case <-time.After(timeout):
	}
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
	out, err := exec.CommandContext(ctx, gdb, "-p", strconv.Itoa(p.cmd.Process.Pid), "-batch", "-nx",
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
	fmt.Fprintf(p.logs, "--- threads (gdb) ---\n%s\n--- end of threads ---\n", strings.Join(keep, "\n"))
}

// exited reports whether the process has ended.
func (p *relayProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// terminate sends SIGTERM and waits up to timeout for the exit code; false
// if the process did not exit in time.
func (p *relayProc) terminate(timeout time.Duration) (code int, exited bool) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		return 0, false
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode(), true
	}
	return 0, true
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// metric returns the value of an unlabelled metric (or of the full series
// name with labels, e.g. `outbox_reconnects_total{connection="amqp"}`),
// false if the relay does not answer or lacks it.
func (p *relayProc) metric(series string) (float64, bool) {
	if p.exited() {
		return 0, false
	}
	resp, err := httpClient.Get("http://" + p.metricsAddr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// ready reports whether the relay's /readyz answers 200.
func (p *relayProc) ready() bool {
	if p.exited() {
		return false
	}
	resp, err := httpClient.Get("http://" + p.metricsAddr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// isLeader reports whether the relay's /metrics shows outbox_leader 1.
func (p *relayProc) isLeader() bool {
	v, ok := p.metric("outbox_leader")
	return ok && v == 1
}

// published returns outbox_published_total, -1 when unreadable.
func (p *relayProc) published() float64 {
	v, ok := p.metric("outbox_published_total")
	if !ok {
		return -1
	}
	return v
}

// localPorts returns the local ports of the process's established TCP
// connections to remotePort, read from /proc: the way to find exactly this
// relay's sessions among every client of a shared server.
func (p *relayProc) localPorts(remotePort int) ([]int, error) {
	pid := p.cmd.Process.Pid
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return nil, fmt.Errorf("list sockets of %s: %w", p.name, err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var ports []int
	for _, file := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, file))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
				continue
			}
			if hexPort(f[2]) == remotePort {
				ports = append(ports, hexPort(f[1]))
			}
		}
	}
	return ports, nil
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

// hexPort reads the port of a /proc/net/tcp address such as 0100007F:1538.
func hexPort(addr string) int {
	_, h, _ := strings.Cut(addr, ":")
	n, _ := strconv.ParseInt(h, 16, 32)
	return int(n)
}

// lockedBuffer holds a relay process's log.
type lockedBuffer struct{ testenv.Buffer }

// count returns how many log lines contain s.
func (l *lockedBuffer) count(s string) int {
	return strings.Count(l.String(), s)
}

// firstLineTime returns the time stamp of the first log line that contains
// sub. The relay logs in text, time stamped time.StampMilli in local time,
// without the year.
func (l *lockedBuffer) firstLineTime(sub string) (time.Time, bool) {
	for _, line := range strings.Split(l.String(), "\n") {
		if !strings.Contains(line, sub) || len(line) < len(time.StampMilli) {
			continue
		}
		ts, err := time.ParseInLocation(time.StampMilli, line[:len(time.StampMilli)], time.Local)
		if err != nil {
			return time.Time{}, false
		}
		now := time.Now()
		return ts.AddDate(now.Year(), 0, 0), true
	}
	return time.Time{}, false
}

// grep returns the log lines that contain any of subs, at most max of them.
func (l *lockedBuffer) grep(max int, subs ...string) string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		for _, s := range subs {
			if strings.Contains(line, s) {
				out = append(out, line)
				break
			}
		}
	}
	if len(out) > max {
		out = append(out[:max], fmt.Sprintf("... (%d more)", len(out)-max))
	}
	return strings.Join(out, "\n")
}

// runBin runs a short command of the binary (status, dead, ...) and returns
// its stdout.
func runBin(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("outbox-relay %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// sleepCtx waits for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-ctx.Done():
	}
}

// waitFor polls cond every 10ms until it holds and returns when it first
// did; it fails the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
