package harness

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	t.Parallel()
	t.Run("HoldsAtOnce", func(t *testing.T) {
		t.Parallel()
		var calls int
		if err := Poll(context.Background(), time.Hour, func() bool { calls++; return true }); err != nil || calls != 1 {
			t.Fatalf("Poll = %v after %d calls; want nil after 1", err, calls)
		}
	})
	t.Run("HoldsLater", func(t *testing.T) {
		t.Parallel()
		var n atomic.Int32
		go func() { n.Store(1) }()
		if err := Poll(context.Background(), 0, func() bool { return n.Load() == 1 }); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Deadline", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		err := Poll(ctx, 0, func() bool { return false })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Poll = %v; want an error wrapping context.DeadlineExceeded", err)
		}
	})
	t.Run("Cancelled", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := Poll(ctx, time.Hour, func() bool { return false }); !errors.Is(err, context.Canceled) {
			t.Fatalf("Poll = %v; want an error wrapping context.Canceled", err)
		}
	})
}

func TestWithin(t *testing.T) {
	t.Parallel()
	if Within(30*time.Millisecond, func() bool { return false }) {
		t.Error("Within reported a condition that never held")
	}
	begin := time.Now()
	if !Within(time.Minute, func() bool { return time.Since(begin) > 20*time.Millisecond }) {
		t.Error("Within missed a condition that held")
	}
}

// fakeTB records a failure instead of ending the test.
type fakeTB struct{ failed string }

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = format
}

func TestWaitUntil(t *testing.T) {
	t.Parallel()
	begin := time.Now()
	if err := WaitUntil(t.Context(), time.Minute, "time to pass", func() bool { return time.Since(begin) > 20*time.Millisecond }); err != nil {
		t.Fatal(err)
	}
	err := WaitUntil(t.Context(), 20*time.Millisecond, "nothing", func() bool { return false })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "wait 20ms for nothing") {
		t.Errorf("WaitUntil = %v; want an error naming the wait and wrapping context.DeadlineExceeded", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := WaitUntil(ctx, time.Hour, "nothing", func() bool { return false }); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitUntil = %v; want an error wrapping context.Canceled", err)
	}
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	begin := time.Now()
	at := WaitFor(t, time.Minute, "time to pass", func() bool { return time.Since(begin) > 20*time.Millisecond })
	if at.Sub(begin) < 20*time.Millisecond {
		t.Errorf("WaitFor returned %s after the start; want the time the condition held", at.Sub(begin))
	}
	f := &fakeTB{}
	WaitFor(f, 20*time.Millisecond, "nothing", func() bool { return false })
	if f.failed == "" {
		t.Error("WaitFor did not fail the test on timeout")
	}
}
