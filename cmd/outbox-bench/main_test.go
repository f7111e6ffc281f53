package main

import (
	"context"
	"os"
	"testing"
)

// TestMain lets the test binary stand in for outbox-bench when a test
// starts a minimal loop process: startLoop runs os.Executable().
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == loopCommand {
		os.Exit(runLoopProcess(context.Background(), os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
