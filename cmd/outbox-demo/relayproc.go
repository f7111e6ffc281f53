package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
// with [relay].
type relayProc struct {
	path  string
	env   []string
	out   *printer
	state *os.ProcessState // of `run`, once it has exited
}

// newRelayProc prepares the relay at path with the demo's configuration.
func newRelayProc(path string, o *options, out *printer) *relayProc {
	// The URLs go through the environment, never the command line, where
	// ps would show their passwords. Later entries win over inherited ones.
	// Retries are quick by default so that a poison row written by hand
	// (see the README) is parked dead within seconds; the caller's
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
	cmd := exec.CommandContext(ctx, r.path, "migrate")
	cmd.Env = r.env
	w := r.out.lineWriter("relay")
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	w.flush()
	if err != nil {
		return fmt.Errorf("%s migrate: %w", relayName, err)
	}
	return nil
}

// run runs `outbox-relay run` until ctx is done, then sends it SIGTERM and
// waits for it to exit (killing it after relayStopWait). It returns an error
// if the relay exits before ctx is done or with a status other than 0.
func (r *relayProc) run(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, r.path, "run")
	cmd.Env = r.env
	cmd.SysProcAttr = relayProcAttr()
	w := r.out.lineWriter("relay")
	cmd.Stdout, cmd.Stderr = w, w
	cmd.Cancel = func() error {
		r.out.printf("demo", "stopping the relay with SIGTERM")
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return cmd.Process.Kill() // no SIGTERM on this system
		}
		return nil
	}
	cmd.WaitDelay = relayStopWait
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", relayName, err)
	}
	r.out.printf("demo", "started `%s run` (pid %d); its log follows as [relay]", relayName, cmd.Process.Pid)
	_ = cmd.Wait() // its error says the same as ProcessState, or that ctx ended
	w.flush()
	r.state = cmd.ProcessState
	switch {
	case ctx.Err() == nil:
		return fmt.Errorf("the relay exited on its own: %s", r.exitStatus())
	case !r.cleanExit():
		return fmt.Errorf("the relay did not exit cleanly: %s", r.exitStatus())
	}
	r.out.printf("demo", "the relay stopped: %s", r.exitStatus())
	return nil
}

// exitStatus describes how the relay exited, e.g. "exit status 0".
func (r *relayProc) exitStatus() string {
	if r.state == nil {
		return "not run"
	}
	return r.state.String()
}

// cleanExit reports whether the relay ran and exited with status 0.
func (r *relayProc) cleanExit() bool { return r.state != nil && r.state.Success() }
