package harness

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// syncRecorder is lineRecorder safe for the processes' goroutines.
type syncRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (s *syncRecorder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, "[relay] "+string(p))
	return len(p), nil
}

func (s *syncRecorder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "")
}

// newFakeRelay returns a Relay that runs the test binary as a fake relay.
func newFakeRelay(t *testing.T, env map[string]string) *Relay {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{Bin: bin, Isolated: true, Env: map[string]string{fakeRelayEnv: "1"}, StopTimeout: 10 * time.Second}
	for k, v := range env {
		r.Env[k] = v
	}
	return r
}

func TestProcessStartStop(t *testing.T) {
	t.Parallel()
	rec := &syncRecorder{}
	r := newFakeRelay(t, map[string]string{"OUTBOX_METRICS_ADDR": testenv.FreeAddr(t)})
	r.Output = rec
	p, err := r.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	WaitFor(t, 10*time.Second, "the fake relay's /statusz to say it is connected", p.Connected)
	if v, ok := p.Metric(`outbox_connection_up{kind="amqp"}`); !ok || v != 1 {
		t.Errorf("Metric = %v, %t; want 1, true", v, ok)
	}
	if v, ok := p.Metric("outbox_published_total"); !ok || v != 42 {
		t.Errorf("Metric = %v, %t; want 42, true", v, ok)
	}
	if p.Exited() || p.State() != nil || p.ExitCode() != -1 || p.Err() == nil {
		t.Error("a running process reports that it exited")
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if !p.Exited() || p.ExitCode() != 0 || p.State().String() != "exit status 0" {
		t.Errorf("after Stop: exited %t, code %d, state %s", p.Exited(), p.ExitCode(), p.State())
	}
	if n := p.Output().Count("relay started"); n != 1 {
		t.Errorf("Output has %d start lines; want 1:\n%s", n, p.Output())
	}
	if got := rec.String(); !strings.Contains(got, "[relay] relay started pid=") || !strings.HasSuffix(got, "[relay] relay stopped\n") {
		t.Errorf("copied output, line by line:\n%s", got)
	}
	if _, ok := p.Metric("outbox_published_total"); ok {
		t.Error("Metric read a relay that has exited")
	}
}

func TestProcessExitStatus(t *testing.T) {
	t.Parallel()
	p, err := newFakeRelay(t, map[string]string{"FAKE_EXIT": "4"}).Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	WaitFor(t, 10*time.Second, "the fake relay to start", func() bool { return p.Output().Count("relay started") > 0 })
	err = p.Stop()
	if code := exitCode(err); code != 4 || p.ExitCode() != 4 {
		t.Errorf("Stop = %v (code %d), ExitCode %d; want exit status 4", err, code, p.ExitCode())
	}
}

func TestProcessKilledAfterStopTimeout(t *testing.T) {
	t.Parallel()
	r := newFakeRelay(t, map[string]string{"FAKE_IGNORE_TERM": "1"})
	r.StopTimeout = 200 * time.Millisecond
	p, err := r.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	WaitFor(t, 10*time.Second, "the fake relay to start", func() bool { return p.Output().Count("relay started") > 0 })
	if err := p.Stop(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Stop = %v; want an error saying the relay was killed", err)
	}
	if !p.Exited() {
		t.Error("the process runs after Stop")
	}
}

func TestProcessStoppedWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	p, err := newFakeRelay(t, nil).Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	WaitFor(t, 10*time.Second, "the fake relay to start", func() bool { return p.Output().Count("relay started") > 0 })
	cancel()
	if !p.Wait(10 * time.Second) {
		t.Fatal("the relay did not exit when Start's context ended")
	}
	if !strings.HasSuffix(p.Output().String(), "relay stopped") {
		t.Errorf("the relay did not get SIGTERM:\n%s", p.Output())
	}
}

func TestCommand(t *testing.T) {
	t.Parallel()
	rec := &syncRecorder{}
	r := newFakeRelay(t, nil)
	r.Output = rec
	out, err := r.Command(context.Background(), "status", "-o", "json")
	if err != nil || out != "{\"ok\":true}\n" {
		t.Errorf("Command = %q, %v", out, err)
	}
	if got := rec.String(); !strings.Contains(got, "[relay] status read\n") {
		t.Errorf("copied output:\n%s", got)
	}
	_, err = r.Command(context.Background(), "bogus")
	if exitCode(err) != 3 || !strings.Contains(err.Error(), `unknown command "bogus"`) {
		t.Errorf("Command(bogus) = %v; want exit status 3 and the command's stderr", err)
	}
}

// Not parallel: it sets an environment variable, which the relay inherits.
func TestRelayEnviron(t *testing.T) {
	t.Setenv("OUTBOX_BATCH_SIZE", "7")
	r := &Relay{Env: map[string]string{"OUTBOX_TABLE": "t", "OUTBOX_METRICS_ADDR": ":9999"}}
	env := strings.Join(r.environ(), "\n")
	if !strings.Contains(env, "OUTBOX_BATCH_SIZE=7") || !strings.HasSuffix(env, "OUTBOX_METRICS_ADDR=:9999\nOUTBOX_TABLE=t") {
		t.Errorf("inherited environment, then Env in order; got:\n%s", env)
	}
	if got := r.metricsAddr(); got != "127.0.0.1:9999" {
		t.Errorf("metricsAddr = %q", got)
	}
	r.Isolated = true
	if env := r.environ(); len(env) != 4 || !strings.HasPrefix(env[0], "PATH=") || !strings.HasPrefix(env[1], "HOME=") {
		t.Errorf("isolated environment: %q", env)
	}
	r.Env["OUTBOX_METRICS_ADDR"] = ""
	if got := r.metricsAddr(); got != "" {
		t.Errorf("metricsAddr with metrics off = %q", got)
	}
}
