package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// startRelayProcess starts `outbox-relay run` on the bench table as its
// own process, the way it runs beside a service, with its log at warn and
// no metrics endpoint. The caller stops it with Stop.
func (b *bench) startRelayProcess(ctx context.Context) (*harness.Process, error) {
	return b.relayOn(b.table, "").Start(ctx)
}

// relayOn is `outbox-relay run` on table t of the bench database, its log
// at warn, serving /metrics on metricsAddr ("" for none).
func (b *bench) relayOn(t schema.Table, metricsAddr string) *harness.Relay {
	r := &harness.Relay{Bin: b.o.relayBin, Output: b.o.stderr, Env: map[string]string{
		"OUTBOX_DATABASE_URL": b.dbURL,
		"OUTBOX_AMQP_URL":     b.o.amqpURL,
		"OUTBOX_TABLE":        t.String(),
		"OUTBOX_METRICS_ADDR": metricsAddr,
		"OUTBOX_LOG_LEVEL":    "warn",
	}}
	if b.o.batch > 0 {
		r.Env["OUTBOX_BATCH_SIZE"] = strconv.Itoa(b.o.batch)
	}
	return r
}

// startRelayIdle starts a relay process (startRelayProcess) and waits
// until it sleeps on LISTEN. The caller stops it with Stop.
func (b *bench) startRelayIdle(ctx context.Context) (*harness.Process, error) {
	p, err := b.startRelayProcess(ctx)
	if err != nil {
		return nil, err
	}
	if err := b.waitIdle(ctx); err != nil {
		return nil, errors.Join(err, p.Stop())
	}
	return p, nil
}

// startRelaysIdle starts n relay processes on the bench table, waits
// until they share its partitions (each owns its share: relay.Shares) and
// sleep on LISTEN, and returns their pids and a stop for all of them.
func (b *bench) startRelaysIdle(ctx context.Context, n int) (pids []int, stop func() error, err error) {
	var procs []*harness.Process
	stop = func() error {
		var errs []error
		for _, p := range procs {
			errs = append(errs, p.Stop())
		}
		return errors.Join(errs...)
	}
	for range max(1, n) {
		p, err := b.startRelayProcess(ctx)
		if err != nil {
			return nil, nil, errors.Join(err, stop())
		}
		procs, pids = append(procs, p), append(pids, p.Pid())
	}
	if err := b.waitShared(ctx, len(procs)); err != nil {
		return nil, nil, errors.Join(err, stop())
	}
	if err := b.waitIdle(ctx); err != nil {
		return nil, nil, errors.Join(err, stop())
	}
	return pids, stop, nil
}

// waitShared waits until n relays own the bench table's partitions in
// balanced shares (relay.Shares), as outbox-relay status reads them.
func (b *bench) waitShared(ctx context.Context, n int) error {
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var got, want []int
	err := harness.Poll(pctx, 50*time.Millisecond, func() bool {
		st, qerr := relay.ReadStatus(pctx, b.db, b.table)
		if qerr != nil {
			return false
		}
		want = slices.DeleteFunc(relay.Shares(st.Partitions, n), func(s int) bool { return s == 0 })
		got = got[:0]
		for _, r := range st.Relays {
			if len(r.Owned) > 0 {
				got = append(got, len(r.Owned))
			}
		}
		slices.Sort(got)
		slices.Reverse(got)
		return slices.Equal(got, want)
	})
	if err != nil {
		return fmt.Errorf("relays own %v partitions, want %v: %w", got, want, err)
	}
	return nil
}

// vmHWM reads a process's peak resident set size from /proc.
func vmHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times on Linux.
const clockTicks = 100

// cpuSeconds returns the CPU time (user and system) the process has used.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	// The command name may hold spaces; the fields after it do not.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return (utime + stime) / clockTicks, nil
}

// brokerPID finds the Erlang VM of the RabbitMQ node on this machine that
// serves AMQP on port, or 0. Other nodes (the fault suite's cluster, see
// .ci/services) are told apart by the RABBITMQ_NODE_PORT they were started
// with; the default node has none.
func brokerPID(port string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err != nil || strings.TrimSpace(string(comm)) != "beam.smp" {
			continue
		}
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		own := "5672"
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, "RABBITMQ_NODE_PORT="); ok {
				own = v
			}
		}
		if own == port {
			return pid
		}
	}
	return 0
}

// startCPUProfile profiles this process into path until stop.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}
