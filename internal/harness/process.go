package harness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Process is one running `outbox-relay run`, from Relay.Start.
type Process struct {
	cmd         *exec.Cmd
	out         *Output
	stopTimeout time.Duration
	metricsAddr string        // "" if metrics are off
	done        chan struct{} // closed once the process has exited
	err         error         // exec.Cmd.Wait's; read after done
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Output returns what the process has written to stdout and stderr.
func (p *Process) Output() *Output { return p.out }

// Done returns a channel closed once the process has exited and its
// output is complete.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits up to timeout for the process to exit, and reports whether it
// has.
func (p *Process) Wait(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// Signal sends sig to the process (not to its children); nil if the
// process has already exited.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s (pid %d): %w", Name, p.Pid(), err)
	}
	return nil
}

// Stop sends SIGTERM and waits for the process to exit; if it has not
// within Relay.StopTimeout, it kills it. It returns nil if the process
// exited with status 0, and an error saying how it exited otherwise. It
// may be called after the process has exited, e.g. to learn how.
func (p *Process) Stop() error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		// No SIGTERM on this system: killing is all that is left.
		p.Kill()
		return err
	}
	if !p.Wait(p.stopTimeout) {
		p.Kill()
		return fmt.Errorf("%s (pid %d) did not exit within %s of SIGTERM: killed", Name, p.Pid(), p.stopTimeout)
	}
	return p.Err()
}

// Kill sends SIGKILL and waits for the process to be gone. It may be
// called after the process has exited.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Err returns nil if the process exited with status 0, and an error (an
// *exec.ExitError, wrapped) saying how it exited otherwise; or an error
// saying that it is still running.
func (p *Process) Err() error {
	if !p.Exited() {
		return fmt.Errorf("%s (pid %d) is still running", Name, p.Pid())
	}
	if p.err != nil {
		return fmt.Errorf("%s (pid %d): %w", Name, p.Pid(), p.err)
	}
	return nil
}

// State returns how the process exited, e.g. to print "exit status 0";
// nil while it runs.
func (p *Process) State() *os.ProcessState {
	if !p.Exited() {
		return nil
	}
	return p.cmd.ProcessState
}

// ExitCode returns the process's exit status; -1 while it runs or if a
// signal ended it.
func (p *Process) ExitCode() int {
	if st := p.State(); st != nil {
		return st.ExitCode()
	}
	return -1
}

// ScrapeTimeout bounds Metric and Connected, which take no context.
const ScrapeTimeout = 2 * time.Second

// MetricsAddr returns the address at which the relay serves /metrics and
// its probes (from OUTBOX_METRICS_ADDR, a port alone meaning 127.0.0.1), ""
// if it serves none.
func (p *Process) MetricsAddr() string { return p.metricsAddr }

// Metrics reads the relay's /metrics.
func (p *Process) Metrics(ctx context.Context) (Metrics, error) {
	if p.metricsAddr == "" {
		return nil, errors.New("the relay serves no metrics (OUTBOX_METRICS_ADDR is empty)")
	}
	return Scrape(ctx, p.metricsAddr)
}

// Metric returns the value of a series on the relay's /metrics (see
// Metrics.Value), within ScrapeTimeout; false if the relay has exited,
// does not answer, or lacks the series.
func (p *Process) Metric(series string) (float64, bool) {
	if p.Exited() {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), ScrapeTimeout)
	defer cancel()
	m, err := p.Metrics(ctx)
	if err != nil {
		return 0, false
	}
	return m.Value(series)
}

// Connected reports whether the relay's /statusz answers 200 within
// ScrapeTimeout: its LISTEN connection is up and, on the leader, its broker
// connection. (/readyz says only that the relay runs, whatever the servers.)
func (p *Process) Connected() bool {
	if p.Exited() || p.metricsAddr == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), ScrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.metricsAddr+"/statusz", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
