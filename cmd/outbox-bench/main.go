// Command outbox-bench measures the relay against the local servers and
// prints each figure next to the limit measured in the same run, as a ratio:
// absolute numbers on a shared machine mean little, ratios measured side by
// side do.
//
// It creates its own database, queue and table, and drops them at the end.
//
//	outbox-bench [-only drain,idle,steady,rates,python,commit,writers,memory,tracing,scale,soak] [-rows 100000] [-rate 2000]
//	             [-rates 10,50,200,1000,5000] [-rate-for 10s] [-rate-events 300] [-python-for 20s]
//	             [-scale-relays 3] [-scale-cpu 0.05] [-scale-rows 20000] [-scale-rounds 3] ...
//
// The scale scenario caps each relay process with a cgroup of the cgroup
// v1 cpu controller (/sys/fs/cgroup/cpu), which needs root; where it
// cannot, it runs uncapped and says so.
//
// The python scenario runs /usr/bin/python3 with python3-psycopg2 and
// python3-pika (`bash .ci/services` installs them).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	var code int
	if len(os.Args) > 1 && os.Args[1] == loopCommand {
		code = runLoopProcess(ctx, os.Args[2:], os.Stdout, os.Stderr)
	} else {
		code = run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	}
	stop()
	os.Exit(code)
}

// options are the benchmark's sizes and servers.
type options struct {
	adminURL     string // a database the bench can CREATE DATABASE from
	amqpURL      string
	relayBin     string
	only         string
	rows         int
	events       int
	interval     time.Duration
	payload      int
	batch        int
	rounds       int
	partitions   int
	rate         int
	steadyFor    time.Duration
	rates        []int
	rateFor      time.Duration
	rateEvents   int
	rateRelays   int
	pythonFor    time.Duration
	writersFor   time.Duration
	commitEvents int
	memoryRows   int
	soakFor      time.Duration
	verbose      bool
	plot         string
	stderr       io.Writer

	// the scale scenario: relays, each one's CPU cap in cores, backlog
	// rows, rounds
	scaleRelays int
	scaleCPU    float64
	scaleRows   int
	scaleRounds int
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	o.stderr = stderr
	fs := flag.NewFlagSet("outbox-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.adminURL, "database-url", envOr("OUTBOX_DATABASE_URL", relay.DatabaseURLDefault), "PostgreSQL URL of a database to create the bench database from")
	fs.StringVar(&o.amqpURL, "amqp-url", envOr("OUTBOX_AMQP_URL", relay.AMQPURLDefault), "RabbitMQ URL")
	fs.IntVar(&o.partitions, "partitions", schema.DefaultPartitions, "the scenarios' tables' number of partitions (what `migrate` gives a new table); 1 is a single leader, as before partitions")
	fs.StringVar(&o.relayBin, "relay", "bin/outbox-relay", "the outbox-relay binary, for the memory, writers, rates, python and scale scenarios")
	fs.StringVar(&o.only, "only", "", "comma-separated scenarios to run (drain, idle, steady, rates, python, commit, writers, memory, tracing, scale, soak); default all but soak")
	fs.IntVar(&o.rows, "rows", 100_000, "backlog rows for the drain scenario")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds of raw publishing and drain, compared side by side")
	fs.IntVar(&o.events, "events", 100, "single events for the idle-latency scenario")
	fs.DurationVar(&o.interval, "interval", 200*time.Millisecond, "time between idle-latency events")
	fs.IntVar(&o.payload, "payload", 256, "payload bytes")
	fs.IntVar(&o.batch, "batch", relay.BatchSizeDefault, "the relay's OUTBOX_BATCH_SIZE")
	fs.IntVar(&o.rate, "rate", 2000, "rows per second for the steady and soak scenarios")
	fs.DurationVar(&o.steadyFor, "steady", 30*time.Second, "duration of the steady scenario")
	rates := fs.String("rates", "10,50,200,1000,5000", "comma-separated rows per second for the rates scenario")
	fs.IntVar(&o.rateRelays, "rate-relays", 1, "relays sharing the table in the rates scenario (their CPU is added up)")
	fs.DurationVar(&o.rateFor, "rate-for", 10*time.Second, "duration of each rate of the rates scenario, through the relay and through the minimal loop")
	fs.IntVar(&o.rateEvents, "rate-events", 300, "rows each rate writes at least, however long it takes: 300 make the 10/s step last 30s")
	fs.DurationVar(&o.pythonFor, "python-for", 20*time.Second, "duration of the python scenario's Python path at 50/s, and then of its Go path")
	fs.IntVar(&o.commitEvents, "commit-events", 100, "events of each work time (0, 20, 200ms after the enqueue) of the commit scenario, 50-400ms apart")
	fs.DurationVar(&o.writersFor, "writers-for", 10*time.Second, "duration of each writers measurement")
	fs.IntVar(&o.memoryRows, "memory-rows", 1_000_000, "large backlog for the memory scenario")
	fs.DurationVar(&o.soakFor, "soak", 5*time.Minute, "duration of the soak scenario (run it with -only soak)")
	fs.IntVar(&o.scaleRelays, "scale-relays", 3, "relays of the scale scenario")
	fs.Float64Var(&o.scaleCPU, "scale-cpu", 0.05, "CPU cap of each relay process of the scale scenario, in cores (cgroup v1 cpu.cfs_quota_us)")
	fs.IntVar(&o.scaleRows, "scale-rows", 20_000, "backlog rows of each drain of the scale scenario")
	fs.IntVar(&o.scaleRounds, "scale-rounds", 3, "rounds of the scale scenario, each draining with 1 relay, with N on a table each and with N sharing one")
	fs.BoolVar(&o.verbose, "v", false, "show the relay's logs")
	fs.StringVar(&o.plot, "plot", "", "write the rates scenario's latency curve, relay and minimal loop, to this PNG file")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the bench process to this file: the drain runs the relay in it (go tool pprof -focus relay)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	if o.rates, err = parseRates(*rates); err != nil {
		fmt.Fprintf(stderr, "outbox-bench: -rates: %v\n", err)
		return 2
	}
	if _, err := cfsQuota(o.scaleCPU, cfsPeriod); err != nil {
		fmt.Fprintf(stderr, "outbox-bench: -scale-cpu: %v\n", err)
		return 2
	}
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "outbox-bench: -cpuprofile: %v\n", err)
			return 2
		}
		defer stop()
	}
	scenarios := []struct {
		name string
		run  func(*bench, context.Context, *report) error
	}{
		{"drain", (*bench).drain},
		{"idle", (*bench).idleLatency},
		{"steady", (*bench).steady},
		{"rates", (*bench).rates},
		{"python", (*bench).pythonPath},
		{"commit", (*bench).commitWake},
		{"writers", (*bench).writers},
		{"memory", (*bench).memory},
		{"tracing", (*bench).tracing},
		{"scale", (*bench).scale},
		{"soak", (*bench).soak},
	}
	want := map[string]bool{}
	for _, s := range strings.Split(o.only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			want[s] = true
		}
	}
	if len(want) == 0 {
		for _, s := range scenarios[:len(scenarios)-1] {
			want[s.name] = true
		}
	}
	if want["memory"] || want["writers"] || want["rates"] || want["python"] || want["commit"] || want["scale"] {
		bin, err := harness.FindRelay(o.relayBin)
		if err != nil {
			fmt.Fprintf(stderr, "outbox-bench: the memory, writers, rates, python, commit and scale scenarios run %s: build it with `make build` or name it with -relay: %v\n", o.relayBin, err)
			return 2
		}
		o.relayBin = bin
	}
	fmt.Fprintf(stdout, "outbox-bench %s, %d CPUs, payload %d bytes, durable queue, persistent messages, confirms\n",
		time.Now().Format("2006-01-02 15:04"), runtime.NumCPU(), o.payload)
	var rep report
	for _, s := range scenarios {
		if !want[s.name] {
			continue
		}
		// Each scenario gets a fresh database, table and queue.
		b, err := newBench(ctx, o, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "outbox-bench: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "outbox-bench: %s...\n", s.name)
		err = s.run(b, ctx, &rep)
		b.close()
		if err != nil {
			fmt.Fprintf(stderr, "outbox-bench: %s: %v\n", s.name, err)
			rep.print(stdout)
			return 1
		}
	}
	rep.print(stdout)
	if o.plot != "" && len(rep.curve) > 0 {
		if err := writePlot(o.plot, rep.curve); err != nil {
			fmt.Fprintf(stderr, "outbox-bench: -plot: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "latency curve: %s\n", o.plot)
	}
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// report is the table the bench prints: each figure next to the reference
// measured in the same run, their ratio, the target and whether it was met.
type report struct {
	rows  [][6]string
	curve []ratePoint // the rates scenario's, for -plot
}

func (r *report) add(figure, value, reference, ratio, target string, ok bool) {
	verdict := ""
	if target != "" {
		verdict = "yes"
		if !ok {
			verdict = "NO"
		}
	}
	r.rows = append(r.rows, [6]string{figure, value, reference, ratio, target, verdict})
}

func (r *report) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tVALUE\tREFERENCE (same run)\tRATIO\tTARGET\tMET")
	for _, row := range r.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", row[0], row[1], row[2], row[3], row[4], row[5])
	}
	_ = tw.Flush()
}
