package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// relayStopWait is how long the relay may take to exit after SIGTERM
// before it is killed: its OUTBOX_SHUTDOWN_TIMEOUT (30s by default) plus
// leeway.
const relayStopWait = 45 * time.Second

// relayName is the relay binary's name.
const relayName = "outbox-relay"

// findRelay returns the relay binary to run: path if given, else
// outbox-relay next to this program (as `make demo` builds them), else
// outbox-relay in PATH.
func findRelay(path string) (string, error) {
	if path != "" {
		p, err := exec.LookPath(path)
		if err != nil {
			return "", fmt.Errorf("-relay: %w", err)
		}
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), relayName)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath(relayName)
	if err != nil {
		return "", fmt.Errorf("no %s next to this program or in PATH: build it with `go build -o bin/%[1]s ./cmd/%[1]s` and pass -relay bin/%[1]s", relayName)
	}
	return p, nil
}

// relayProc runs the relay binary as a subprocess, its output prefixed
// with [relay]. Its run may stop and start it again.
type relayProc struct {
	path string
	env  []string
	out  *printer
	// runs holds how each `run` exited, in order. Only the goroutine of
	// the run under way appends to it; run reads it once that has returned.
	runs []*os.ProcessState
}

// pause asks relayProc.run to stop the relay for length, or until cut is
// closed, whichever comes first.
type pause struct {
	length time.Duration
	cut    <-chan struct{}
}

// newRelayProc prepares the relay at path with the demo's configuration.
func newRelayProc(path string, o *options, out *printer) *relayProc {
	// The URLs go through the environment, never the command line, where
	// ps would show their passwords. Later entries win over inherited ones.
	// Retries are quick by default so that the poison row (and one written
	// by hand, see the README) is parked dead within seconds; the caller's
	// environment may say otherwise.
	env := append([]string{"OUTBOX_MAX_ATTEMPTS=3", "OUTBOX_RETRY_BACKOFF=1s"}, os.Environ()...)
	env = append(env,
		"OUTBOX_DATABASE_URL="+o.env.DatabaseURL,
		"OUTBOX_AMQP_URL="+o.env.AMQPURL,
		"OUTBOX_AMQP_PASSWORD_FILE="+o.env.AMQPPasswordFile,
		"OUTBOX_TABLE="+o.table.String(),
		"OUTBOX_METRICS_ADDR="+o.metricsAddr,
		"OUTBOX_LOG_FORMAT=text",
	)
	return &relayProc{path: path, env: env, out: out}
}

// migrate runs `outbox-relay migrate`: it creates the table, or finds it up
// to date.
func (r *relayProc) migrate(ctx context.Context) error {
	return r.command(ctx, "relay", "migrate")
}

// retryDead runs `outbox-relay dead retry -all`, as an operator would, its
// output prefixed with [who].
func (r *relayProc) retryDead(ctx context.Context, who string) error {
	return r.command(ctx, who, "dead", "retry", "-all")
}

// command runs the relay binary with args and the relay's environment until
// it exits, its output prefixed with [who].
func (r *relayProc) command(ctx context.Context, who string, args ...string) error {
	cmd := exec.CommandContext(ctx, r.path, args...)
	cmd.Env = r.env
	w := r.out.lineWriter(who)
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	w.flush()
	if err != nil {
		return fmt.Errorf("%s %s: %w", relayName, strings.Join(args, " "), err)
	}
	return nil
}

// run runs `outbox-relay run` until ctx is done, then stops it. For each
// pause received meanwhile, it stops the relay, which must exit 0, and
// starts it again once the pause is over, telling events about both. It
// returns an error if the relay exits on its own or with a status other
// than 0; it returns only once the relay has exited.
func (r *relayProc) run(ctx context.Context, pauses <-chan pause, events chan<- lagEvent) error {
	for {
		// The relay's context is not ctx's child: this loop alone decides
		// when it is stopped, after saying why.
		runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
		exited := make(chan error, 1)
		go func() { exited <- r.runOnce(runCtx) }()
		var p pause
		select {
		case err := <-exited:
			stop()
			return err
		case <-ctx.Done():
			r.out.printf("demo", "stopping the relay with SIGTERM")
			stop()
			return <-exited
		case p = <-pauses:
			r.out.printf("demo", "stopping the relay for %s: events pile up in the table, watch the lag rise", p.length)
			stop()
			if err := <-exited; err != nil {
				return err
			}
		}
		notify(events, relayStopped)
		t := time.NewTimer(p.length)
		select {
		case <-t.C:
			r.out.printf("demo", "starting the relay again after %s: it publishes what piled up, watch the lag fall", p.length)
		case <-p.cut:
			t.Stop()
			r.out.printf("demo", "production stopped: starting the relay again now, so that the events committed meanwhile arrive")
		case <-ctx.Done():
			t.Stop()
			return nil // it stays stopped, with status 0
		}
		notify(events, relayStarting)
	}
}

// runOnce runs `outbox-relay run` until ctx is done, then sends it SIGTERM
// and waits for it to exit (killing it after relayStopWait). It returns an
// error if the relay exits before ctx is done or with a status other than 0.
func (r *relayProc) runOnce(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, r.path, "run")
	cmd.Env = r.env
	cmd.SysProcAttr = relayProcAttr()
	w := r.out.lineWriter("relay")
	cmd.Stdout, cmd.Stderr = w, w
	cmd.Cancel = func() error {
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return cmd.Process.Kill() // no SIGTERM on this system
		}
		return nil
	}
	cmd.WaitDelay = relayStopWait
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", relayName, err)
	}
	again := ""
	if len(r.runs) > 0 {
		again = " again"
	}
	r.out.printf("demo", "started `%s run`%s (pid %d); its log follows as [relay]", relayName, again, cmd.Process.Pid)
	_ = cmd.Wait() // its error says the same as ProcessState, or that ctx ended
	w.flush()
	r.runs = append(r.runs, cmd.ProcessState)
	switch {
	case ctx.Err() == nil:
		return fmt.Errorf("the relay exited on its own: %s", cmd.ProcessState)
	case !cmd.ProcessState.Success():
		return fmt.Errorf("the relay did not exit cleanly: %s", cmd.ProcessState)
	}
	r.out.printf("demo", "the relay stopped: %s", cmd.ProcessState)
	return nil
}

// exitStatus describes how the relay exited, e.g. "exit status 0", or
// "exit status 0 each of the 3 times it was stopped".
func (r *relayProc) exitStatus() string {
	if len(r.runs) == 0 {
		return "not run"
	}
	all := make([]string, len(r.runs))
	same := true
	for i, st := range r.runs {
		all[i] = st.String()
		same = same && all[i] == all[0]
	}
	switch {
	case len(all) == 1:
		return all[0]
	case same:
		return fmt.Sprintf("%s each of the %d times it was stopped", all[0], len(all))
	}
	return strings.Join(all, ", then ")
}

// cleanExit reports whether the relay ran and exited with status 0 every
// time it was stopped.
func (r *relayProc) cleanExit() bool {
	for _, st := range r.runs {
		if !st.Success() {
			return false
		}
	}
	return len(r.runs) > 0
}
