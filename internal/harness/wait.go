package harness

import (
	"context"
	"fmt"
	"time"
)

// PollInterval is how often Within, WaitUntil and WaitFor check their
// condition, and Poll's default.
const PollInterval = 10 * time.Millisecond

// Poll calls cond every interval (PollInterval if 0) until it returns
// true, and then returns nil; or until ctx is done, and then returns an
// error wrapping ctx.Err(). cond is called once at least, at once.
func Poll(ctx context.Context, interval time.Duration, cond func() bool) error {
	if interval <= 0 {
		interval = PollInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("condition still false: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
	return nil
}

// Within polls cond every PollInterval for up to timeout, and reports
// whether it held.
func Within(timeout time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return Poll(ctx, PollInterval, cond) == nil
}

// WaitUntil polls cond every PollInterval until it holds, for at most
// timeout and until ctx is done. Its error, on a timeout or the end of
// ctx, names the condition with what ("the relay to lead") and wraps
// ctx's error. It is WaitFor for programs, which have no test to fail.
func WaitUntil(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := Poll(ctx, PollInterval, cond); err != nil {
		return fmt.Errorf("wait %s for %s: %w", timeout, what, err)
	}
	return nil
}

// TB is the part of testing.TB that WaitFor uses: a *testing.T or
// *testing.B passes. The package does not import testing, so that the
// programs built on it (cmd/outbox-demo, cmd/outbox-bench) do not carry
// it and its flags.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// WaitFor polls cond every PollInterval until it holds, and returns when
// it first did; after timeout it fails the test with what, which names
// the condition ("relay-1 to lead").
func WaitFor(tb TB, timeout time.Duration, what string, cond func() bool) time.Time {
	tb.Helper()
	if !Within(timeout, cond) {
		tb.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
	return time.Now()
}
