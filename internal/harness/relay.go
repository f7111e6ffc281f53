package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Name is the relay binary's name.
const Name = "outbox-relay"

// StopTimeoutDefault is how long a relay may take to exit after SIGTERM
// before it is killed: its OUTBOX_SHUTDOWN_TIMEOUT (30s by default) plus
// leeway.
const StopTimeoutDefault = 45 * time.Second

// Relay is the relay binary and the environment it runs with. Its zero
// value is not usable: set Bin. A Relay may start any number of processes,
// one after the other or side by side; it is not changed by them.
type Relay struct {
	// Bin is the path of the outbox-relay binary, e.g. from FindRelay or
	// Build.
	Bin string
	// Env holds the variables the relay runs with (OUTBOX_DATABASE_URL,
	// OUTBOX_TABLE, ...), on top of the inherited environment: an entry
	// here wins over an inherited one, and an empty value sets the variable
	// empty (OUTBOX_METRICS_ADDR= turns metrics off). To give a default
	// that the caller's environment may override, set it only if
	// os.Getenv returns "".
	Env map[string]string
	// Isolated passes on, of this program's environment, only PATH and
	// HOME, so that an OUTBOX_* variable of the caller's shell cannot
	// change what a test runs. By default the whole environment is
	// inherited.
	Isolated bool
	// Output, if not nil, receives a copy of what the relay writes to
	// stdout and stderr, one whole line (ending in "\n") per Write call:
	// a writer that prefixes each line needs no buffering. A last line
	// without a newline is completed when the process exits. Processes
	// started side by side write to it concurrently; the writes of one
	// process come one at a time. Its errors are ignored.
	Output io.Writer
	// OutputPrefix begins each line copied to Output, e.g. "[relay] ", so
	// that the relay's lines stand out among a program's own.
	OutputPrefix string
	// StopTimeout is how long the relay may take to exit after SIGTERM
	// (from Process.Stop, or the end of Start's context) before it is
	// killed. Defaults to StopTimeoutDefault.
	StopTimeout time.Duration
}

// FindRelay returns the relay binary to run: path if not empty (searched
// in PATH if it holds no slash), else outbox-relay next to the running
// program (as `make build` puts both in bin/), else outbox-relay in PATH.
func FindRelay(path string) (string, error) {
	if path != "" {
		p, err := exec.LookPath(path)
		if err != nil {
			return "", fmt.Errorf("find relay binary: %w", err)
		}
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), Name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath(Name)
	if err != nil {
		return "", fmt.Errorf("no %s next to this program or in PATH (build it with `make build`): %w", Name, err)
	}
	return p, nil
}

// Build compiles cmd/outbox-relay into dir with the go command, passing
// flags to `go build` (e.g. "-race", or "-trimpath" for a binary like the
// release's), and returns the binary's path. It must run inside this
// module.
func Build(ctx context.Context, dir string, flags ...string) (string, error) {
	bin := filepath.Join(dir, Name)
	args := append(append([]string{"build"}, flags...), "-o", bin, "github.com/outbox-relay/outbox-relay/cmd/outbox-relay")
	if out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", Name, err, out)
	}
	return bin, nil
}

// Start starts `outbox-relay run`. When ctx is done, the relay receives
// SIGTERM and, if it is still running StopTimeout later, SIGKILL. The
// caller must end the process with Stop, Kill or Wait (or the end of ctx
// followed by Wait): until then a goroutine of the package waits for it.
func (r *Relay) Start(ctx context.Context) (*Process, error) {
	out := newOutput(r.Output, r.OutputPrefix)
	cmd := r.command(ctx, "run")
	cmd.SysProcAttr = procAttr()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s run: %w", Name, err)
	}
	p := &Process{
		cmd:         cmd,
		out:         out,
		stopTimeout: r.stopTimeout(),
		metricsAddr: r.metricsAddr(),
		done:        make(chan struct{}),
	}
	go func() {
		defer close(p.done)
		p.err = cmd.Wait()
		out.flush()
	}()
	return p, nil
}

// Command runs `outbox-relay args...` (migrate, dead retry -all, status -o
// json, ...) until it exits, and returns what it wrote to stdout. Its
// stdout and stderr are also copied to Output. An exit status other than
// 0 is an error that ends with the command's stderr. ctx bounds the run as
// it bounds Start's.
func (r *Relay) Command(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := r.command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if r.Output != nil {
		// Separate line buffers: a line of stdout and one of stderr never
		// mix.
		outCopy, errCopy := &lineCopier{to: r.Output, prefix: r.OutputPrefix}, &lineCopier{to: r.Output, prefix: r.OutputPrefix}
		defer outCopy.flush()
		defer errCopy.flush()
		cmd.Stdout, cmd.Stderr = io.MultiWriter(&stdout, outCopy), io.MultiWriter(&stderr, errCopy)
	}
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s", Name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// command prepares the binary with args and the relay's environment.
func (r *Relay) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, r.Bin, args...)
	cmd.Env = r.environ()
	cmd.Cancel = func() error {
		err := cmd.Process.Signal(syscall.SIGTERM)
		if err != nil && !errors.Is(err, os.ErrProcessDone) {
			return cmd.Process.Kill() // no SIGTERM on this system
		}
		return err
	}
	cmd.WaitDelay = r.stopTimeout()
	return cmd
}

// environ is the relay's environment: inherited (all, or PATH and HOME),
// then Env in a stable order. exec uses the last value of a duplicate key.
func (r *Relay) environ() []string {
	env := os.Environ()
	if r.Isolated {
		env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	}
	for _, k := range slices.Sorted(maps.Keys(r.Env)) {
		env = append(env, k+"="+r.Env[k])
	}
	return env
}

func (r *Relay) stopTimeout() time.Duration {
	if r.StopTimeout > 0 {
		return r.StopTimeout
	}
	return StopTimeoutDefault
}

// metricsAddrDefault is the relay's OUTBOX_METRICS_ADDR default
// (cmd/outbox-relay/config.go).
const metricsAddrDefault = ":9464"

// metricsAddr is the address the relay will serve /metrics on, as a
// client dials it; "" if metrics are off.
func (r *Relay) metricsAddr() string {
	addr, ok := r.Env["OUTBOX_METRICS_ADDR"]
	if !ok && !r.Isolated {
		addr, ok = os.LookupEnv("OUTBOX_METRICS_ADDR")
	}
	if !ok {
		addr = metricsAddrDefault
	}
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	return addr
}
