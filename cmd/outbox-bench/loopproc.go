package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// loopCommand makes outbox-bench run one minimal loop as a process of its
// own, as the relay runs: `outbox-bench minimal-loop -table t`. The rates
// and writers scenarios compare the relay with it, so that both pay for
// waking an idle process at each notification and both are measured
// alike: the CPU time of the process and of its backends. (In a goroutine
// of the bench, kept awake by the writers and the consumer, the loop woke
// 0.3-0.5 ms sooner and its own CPU time could only be estimated.)
//
// The URLs come in the environment (loopDatabaseEnv, loopAMQPEnv), not in
// the arguments that any user of the machine can list.
const loopCommand = "minimal-loop"

const (
	loopDatabaseEnv = "BENCH_LOOP_DATABASE_URL"
	loopAMQPEnv     = "BENCH_LOOP_AMQP_URL"
	loopReady       = "ready"
)

// runLoopProcess is `outbox-bench minimal-loop`: it LISTENs on the table's
// channel, prints loopReady, and drains at each notification (and every
// -poll, if set) until SIGTERM.
func runLoopProcess(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fs := flag.NewFlagSet(loopCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	table := fs.String("table", "", "the table (unquoted), also the NOTIFY channel")
	batch := fs.Int("batch", 500, "rows per batch")
	poll := fs.Duration("poll", 0, "also drain this often; 0 for never")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "outbox-bench %s: %v\n", loopCommand, err)
		return 1
	}
	conn, err := amqp.Dial(os.Getenv(loopAMQPEnv))
	if err != nil {
		return fail(fmt.Errorf("connect to the broker: %w", err))
	}
	defer conn.Close()
	ch, err := confirmChannel(conn)
	if err != nil {
		return fail(err)
	}
	l, err := newLoop(ctx, os.Getenv(loopDatabaseEnv), ch, pgxIdent(*table), *batch)
	if err != nil {
		return fail(err)
	}
	defer l.close(ctx)
	if err := l.listen(ctx, *table, *poll, func() { fmt.Fprintln(stdout, loopReady) }); err != nil {
		return fail(err)
	}
	return 0
}

// loopProcess is a minimal loop running as a process of its own.
type loopProcess struct {
	cmd    *exec.Cmd
	exited chan error
}

// startLoop starts a minimal loop process on table (unquoted), woken by
// its trigger's NOTIFY and, if poll > 0, every poll, and waits until it
// listens. Its pid is for the CPU meter; stop ends it.
func (b *bench) startLoop(ctx context.Context, table string, poll time.Duration) (pid int, stop func() error, err error) {
	self, err := os.Executable()
	if err != nil {
		return 0, nil, fmt.Errorf("minimal loop: %w", err)
	}
	cmd := exec.Command(self, loopCommand, "-table", table, "-batch", strconv.Itoa(b.o.batch), "-poll", poll.String())
	cmd.Env = append(os.Environ(), loopDatabaseEnv+"="+b.dbURL, loopAMQPEnv+"="+b.o.amqpURL)
	cmd.Stderr = b.o.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, nil, fmt.Errorf("minimal loop: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("minimal loop: %w", err)
	}
	p := &loopProcess{cmd: cmd, exited: make(chan error, 1)}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && strings.TrimSpace(sc.Text()) == loopReady
		ready <- ok
		_, _ = io.Copy(io.Discard, out) // until it exits
		p.exited <- cmd.Wait()
	}()
	select {
	case ok := <-ready:
		if ok {
			return cmd.Process.Pid, p.stop, nil
		}
		err = errors.New("minimal loop exited before it listened")
	case <-time.After(30 * time.Second):
		err = errors.New("minimal loop did not listen within 30s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	return 0, nil, errors.Join(err, p.stop())
}

// stop ends the loop with SIGTERM (SIGKILL after 10s) and waits for it.
func (p *loopProcess) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			return fmt.Errorf("minimal loop: %w", err)
		}
		return nil
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		return fmt.Errorf("minimal loop: did not stop within 10s: %w", <-p.exited)
	}
}
