package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/harness"
)

// cpuUse is the CPU time, in seconds, used during a window.
type cpuUse struct {
	proc     float64 // the measured processes (the relays'); 0 if none
	backends float64 // its PostgreSQL backends; NaN if none could be read
	bench    float64 // this process
}

// cpuMeter adds up the CPU time (user and system, from /proc/<pid>/stat)
// that a process and its PostgreSQL backends use during a window, and this
// process's own. The backends are the bench database's sessions whose
// application_name starts with a prefix; they are listed from
// pg_stat_activity at every sample, so a connection opened during the
// window counts from zero, and one closed during it loses the time since
// the last sample (200ms; the relay's and the loop's connections live
// through a window). PostgreSQL must run on this machine.
type cpuMeter struct {
	conn         *pgx.Conn // the meter's own, on the admin database
	db, prefix   string
	procs        []int // the measured processes
	procFirst    []float64
	benchFirst   float64
	first, last  map[int]float64
	stop, done   chan struct{}
	sampleFailed error
}

const cpuSampleEvery = 200 * time.Millisecond

// meterCPU starts measuring the processes procs (none: nil) and the
// backends whose application_name starts with prefix. Stop it with finish.
func (b *bench) meterCPU(ctx context.Context, procs []int, prefix string) (*cpuMeter, error) {
	conn, err := pgx.Connect(ctx, b.o.adminURL)
	if err != nil {
		return nil, fmt.Errorf("cpu meter: %w", err)
	}
	m := &cpuMeter{conn: conn, db: b.dbName, prefix: prefix, procs: procs, first: map[int]float64{}, last: map[int]float64{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, p := range procs {
		s, err := cpuSeconds(p)
		if err != nil {
			_ = conn.Close(ctx)
			return nil, err
		}
		m.procFirst = append(m.procFirst, s)
	}
	if err := m.sample(ctx, true); err != nil {
		_ = conn.Close(ctx)
		return nil, err
	}
	m.benchFirst, _ = cpuSeconds(os.Getpid())
	// Samples end between queries, never in one: a query cut short would
	// leave the connection unusable for the last sample.
	go func() {
		defer close(m.done)
		t := time.NewTicker(cpuSampleEvery)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := m.sample(ctx, false); err != nil {
				m.sampleFailed = err
				return
			}
		}
	}()
	return m, nil
}

// sample reads the CPU time of every backend listed now. At the first
// sample, a backend's time so far is the base; later ones start from zero.
func (m *cpuMeter) sample(ctx context.Context, initial bool) error {
	rows, err := m.conn.Query(ctx, "select pid from pg_stat_activity where datname = $1 and starts_with(application_name, $2)", m.db, m.prefix)
	if err != nil {
		return fmt.Errorf("list backends: %w", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return fmt.Errorf("list backends: %w", err)
	}
	for _, pid := range pids {
		s, err := cpuSeconds(int(pid))
		if err != nil {
			continue // gone since, or on another machine
		}
		if _, seen := m.first[int(pid)]; !seen {
			m.first[int(pid)] = 0
			if initial {
				m.first[int(pid)] = s
			}
		}
		m.last[int(pid)] = s
	}
	return nil
}

// finish takes a last sample, stops the meter and returns what was used.
func (m *cpuMeter) finish(ctx context.Context) (cpuUse, error) {
	close(m.stop)
	<-m.done
	defer m.conn.Close(context.WithoutCancel(ctx))
	if m.sampleFailed != nil {
		return cpuUse{}, m.sampleFailed
	}
	if err := m.sample(ctx, false); err != nil {
		return cpuUse{}, err
	}
	var u cpuUse
	for i, p := range m.procs {
		s, err := cpuSeconds(p)
		if err != nil {
			return cpuUse{}, err
		}
		u.proc += s - m.procFirst[i]
	}
	self, _ := cpuSeconds(os.Getpid())
	u.bench = self - m.benchFirst
	u.backends = math.NaN()
	if len(m.first) > 0 {
		u.backends = 0
		for pid, first := range m.first {
			u.backends += m.last[pid] - first
		}
	}
	return u, nil
}

// quietXacts waits until the bench database has no client sessions but
// those of the application_name prefix and the bench's own connection
// (PostgreSQL has counted the transactions of a session by the time it
// is gone), then returns xacts (commits plus rollbacks). Sessions that
// stay report theirs at most a second late, at both ends of a window.
func (b *bench) quietXacts(ctx context.Context, prefix string) (int64, error) {
	var qerr error
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := harness.Poll(wctx, 0, func() bool {
		var n int
		qerr = b.admin.QueryRow(wctx, `select count(*) from pg_stat_activity where datname = $1 and backend_type = 'client backend'
 and not starts_with(coalesce(application_name, ''), $2) and pid <> $3`, b.dbName, prefix, b.db.PgConn().PID()).Scan(&n)
		return qerr != nil || n == 0
	})
	if qerr != nil {
		return 0, qerr
	}
	if err != nil {
		return 0, fmt.Errorf("other sessions on the bench database: %w", err)
	}
	return b.xacts(ctx)
}

// perK formats seconds per 1,000 of n messages.
func perK(s float64, n int) float64 { return s / float64(max(n, 1)) * 1000 }
