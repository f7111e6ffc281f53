package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// bin is the outbox-relay binary built for this test run: the tests run it
// as a real process, as an operator would.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "outbox-relay-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "outbox-relay")
	out, err := exec.Command("go", "build", "-race", "-o", bin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build outbox-relay: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// command returns the binary ready to run with args and env added to a
// copy of this process's environment without any OUTBOX_ variable.
func command(ctx context.Context, env map[string]string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OUTBOX_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// runBin runs the binary to completion and returns its output and exit code.
func runBin(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var o, e bytes.Buffer
	cmd := command(ctx, env, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// baseEnv points the binary at the test's table and the test servers.
func baseEnv(e *testenv.Env) map[string]string {
	return map[string]string{
		"OUTBOX_DATABASE_URL": testenv.DatabaseURL(),
		"OUTBOX_AMQP_URL":     testenv.AMQPURL(),
		"OUTBOX_TABLE":        e.Table.String(),
		"OUTBOX_METRICS_ADDR": "",
	}
}

// relayProc is a running relay process.
type relayProc struct {
	cmd    *exec.Cmd
	stderr *testenv.Buffer
	done   chan struct{}
	err    error
}

// startRelay starts `outbox-relay run` and stops it with SIGKILL at the end
// of the test if the test has not stopped it.
func startRelay(t *testing.T, env map[string]string) *relayProc {
	t.Helper()
	p := &relayProc{cmd: command(context.Background(), env, "run"), stderr: &testenv.Buffer{}, done: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("relay stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

// stop sends SIGTERM and returns the exit code.
func (p *relayProc) stop(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(40 * time.Second):
		t.Fatalf("relay did not exit after SIGTERM")
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func status(t *testing.T, env map[string]string) map[string]any {
	t.Helper()
	stdout, stderr, code := runBin(t, env, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, stdout)
	}
	for _, k := range []string{"pending", "dead", "oldest_pending_age_seconds", "leader"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status -o json lacks %q", k)
		}
	}
	return st
}
