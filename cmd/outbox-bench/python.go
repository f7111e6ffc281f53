package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// pythonLatencyScript is the Python path: a psycopg2 writer and a pika
// consumer in one process, which prints the commit → receipt latency.
//
//go:embed python_latency.py
var pythonLatencyScript []byte

// python is Debian's interpreter, where python3-psycopg2 and python3-pika
// install.
const python = "/usr/bin/python3"

// pythonRate is the rate the Python path is held to, in events a second.
const pythonRate = 50

// pythonResult is the JSON line python_latency.py prints.
type pythonResult struct {
	Events int     `json:"events"`
	P50    float64 `json:"p50_ms"`
	P95    float64 `json:"p95_ms"`
	P99    float64 `json:"p99_ms"`
	Max    float64 `json:"max_ms"`
}

func (r pythonResult) latency() string {
	return fmt.Sprintf("p50 %.1fms p95 %.1fms p99 %.1fms max %.1fms", r.P50, r.P95, r.P99, r.Max)
}

func msDuration(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// pythonPath compares a Python service with the Go writers at the same
// rate, both through the relay process: a psycopg2 writer committing each
// event through the table's enqueue function and a pika consumer, against
// the rates scenario's Go writers and amqp091-go consumer.
func (b *bench) pythonPath(ctx context.Context, rep *report) error {
	if err := checkPython(ctx); err != nil {
		return err
	}
	d := b.o.pythonFor
	py, err := b.runPython(ctx, d)
	if err != nil {
		return fmt.Errorf("python path: %w", err)
	}
	load := steadyLoad{table: b.table.Ident(), rate: pythonRate, writers: rateWriters(pythonRate), d: d}
	goPath, err := b.runRate(ctx, load, false)
	if err != nil {
		return fmt.Errorf("go path: %w", err)
	}
	fmt.Fprintf(b.o.stderr, "outbox-bench: %d/s: python %s; go %s\n", pythonRate, py.latency(), goPath.latency())

	p99, gp99 := msDuration(py.P99), quantile(goPath.lat, 0.99)
	bound := max(5*time.Millisecond, gp99*3/2)
	rep.add(fmt.Sprintf("python %d/s for %s, psycopg2 + pika: latency", pythonRate, d), "python "+py.latency(),
		fmt.Sprintf("go (%d writers) %s", load.writers, goPath.latency()),
		fmt.Sprintf("p99 %.2f", float64(p99)/float64(max(gp99, 1))),
		fmt.Sprintf("p99 <= max(5ms, 1.5 x go) = %s", ms(bound)), p99 <= bound)
	return nil
}

// checkPython fails, saying how to fix it, unless python3 can import
// psycopg2 and pika.
func checkPython(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, python, "-c", "import psycopg2, pika").CombinedOutput()
	if err != nil {
		// The traceback's last line names the missing module.
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return fmt.Errorf("%s cannot import psycopg2 and pika (%v: %s): install python3-psycopg2 and python3-pika with `bash .ci/services`",
			python, err, lines[len(lines)-1])
	}
	return nil
}

// runPython runs python_latency.py for d beside a relay process on the
// bench table, and returns what it measured.
func (b *bench) runPython(ctx context.Context, d time.Duration) (r pythonResult, err error) {
	p, err := b.startRelayIdle(ctx)
	if err != nil {
		return r, err
	}
	defer func() {
		if serr := p.Stop(); err == nil {
			err = serr
		}
	}()
	// The script's own deadlines (connect, statements, last receipts) are
	// 10s each; this one bounds the whole.
	pctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(pctx, python, "-", b.table.Schema, b.table.Name, b.queue, strconv.Itoa(pythonRate),
		strconv.FormatFloat(d.Seconds(), 'f', -1, 64), strconv.Itoa(b.o.payload))
	// URLs in the environment, not in argv: they may hold passwords.
	cmd.Env = append(os.Environ(), "OUTBOX_DATABASE_URL="+b.dbURL, "OUTBOX_AMQP_URL="+b.o.amqpURL)
	cmd.Stdin = bytes.NewReader(pythonLatencyScript)
	cmd.Stderr = b.o.stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		return r, fmt.Errorf("python_latency.py: %w", err)
	}
	return parsePythonResult(out)
}

// parsePythonResult reads the last line python_latency.py printed.
func parsePythonResult(out []byte) (r pythonResult, err error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return r, fmt.Errorf("python_latency.py printed %q: %w", out, err)
	}
	if r.Events == 0 {
		return r, fmt.Errorf("python_latency.py printed %q: no events", out)
	}
	return r, nil
}
