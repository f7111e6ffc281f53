//go:build faults

package faults

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// bin is the outbox-relay binary under test: built for this run with the
// race detector, or the one OUTBOX_FAULTS_BIN names.
var bin string

// results collects the summary of every scenario, printed by TestMain.
var results struct {
	mu    sync.Mutex
	lines []summary
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "outbox-faults")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = os.Getenv("OUTBOX_FAULTS_BIN") // a binary built elsewhere (a release, another revision)
	if bin == "" {
		bin, err = harness.Build(context.Background(), dir, "-race")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	if err := repairBroker(); err != nil {
		fmt.Fprintf(os.Stderr, "broker not usable: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	printResults()
	os.RemoveAll(dir)
	os.Exit(code)
}

// repairBroker undoes what an earlier run killed half-way may have left:
// a stopped broker application or a tiny memory watermark.
func repairBroker() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := harness.StartBroker(ctx); err != nil {
		return err
	}
	wm, err := harness.MemoryWatermark(ctx)
	if err != nil {
		return err
	}
	if f, err := strconv.ParseFloat(wm, 64); err == nil && f < 0.01 {
		fmt.Fprintf(os.Stderr, "faults: memory watermark was %s (left by a killed run): setting %s\n", wm, watermarkDefault)
		if err := harness.SetMemoryWatermark(ctx, watermarkDefault); err != nil {
			return err
		}
	}
	n, err := harness.MaxMessageSize(ctx)
	if err != nil {
		return err
	}
	if n < 1<<20 {
		fmt.Fprintf(os.Stderr, "faults: broker max_message_size was %d (left by a killed run): setting %d\n", n, harness.MaxMessageSizeDefault)
		if err := harness.SetMaxMessageSize(ctx, harness.MaxMessageSizeDefault); err != nil {
			return err
		}
	}
	return nil
}

// summary is one scenario's result.
type summary struct {
	scenario    string
	committed   int
	lost        int
	duplicates  int
	redelivered int
	reorders    int
	dead        int
	faults      int
	recover     time.Duration // longest recovery; 0 when the scenario has none
	maxLatency  time.Duration
}

// String is the fixed-format line a scenario prints.
func (s summary) String() string {
	return fmt.Sprintf("FAULT scenario=%s committed=%d lost=%d duplicates=%d redelivered=%d reorders=%d dead=%d faults=%d recover=%s max_latency=%s",
		s.scenario, s.committed, s.lost, s.duplicates, s.redelivered, s.reorders, s.dead, s.faults, fmtDur(s.recover), fmtDur(s.maxLatency))
}

func fmtDur(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(time.Millisecond).String()
}

func report(s summary) {
	fmt.Println(s.String())
	results.mu.Lock()
	defer results.mu.Unlock()
	results.lines = append(results.lines, s)
}

func printResults() {
	results.mu.Lock()
	defer results.mu.Unlock()
	if len(results.lines) == 0 {
		return
	}
	fmt.Println("\nfault scenarios:")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tcommitted\tlost\tduplicates\tredelivered\treorders\tdead\tfaults\trecover\tmax latency")
	for _, s := range results.lines {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", s.scenario, s.committed, s.lost, s.duplicates,
			s.redelivered, s.reorders, s.dead, s.faults, fmtDur(s.recover), fmtDur(s.maxLatency))
	}
	_ = tw.Flush()
}
