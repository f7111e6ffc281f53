package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// Lag reporting.
const (
	lagInterval      = 3 * time.Second        // a [lag] line this often
	burstSample      = 100 * time.Millisecond // after a burst, look this often
	burstLines       = 8                      // at most this many lines per burst
	burstWatch       = 30 * time.Second       // give up following a burst after this
	lagQueryTimeout  = 2 * time.Second
	metricsPublished = "outbox_published_total"
	metricsLag       = "outbox_lag_seconds"
)

// lagReporter prints the outbox's backlog as the database sees it
// (relay.ReadStatus, what `outbox-relay status` shows) and as the relay
// reports it on /metrics. After a burst it looks closely until the backlog
// is gone.
type lagReporter struct {
	pool        *pgxpool.Pool
	table       schema.Table
	metricsAddr string // empty: the relay serves no metrics
	out         *printer
	bursts      <-chan time.Time
	client      http.Client
}

// run reports every lagInterval, and follows each burst, until ctx is done.
func (l *lagReporter) run(ctx context.Context) error {
	tick := time.NewTicker(lagInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if line, _, err := l.sample(ctx, true); err == nil {
				l.out.printf("lag", "%s", line)
			} else if ctx.Err() == nil {
				l.out.printf("lag", "no status: %v", err)
			}
		case at := <-l.bursts:
			l.followBurst(ctx, at)
			tick.Reset(lagInterval)
		}
	}
}

// followBurst samples the backlog every burstSample until it is empty.
func (l *lagReporter) followBurst(ctx context.Context, committed time.Time) {
	tick := time.NewTicker(burstSample)
	defer tick.Stop()
	deadline := time.NewTimer(burstWatch)
	defer deadline.Stop()
	for lines := 0; ; {
		line, pending, err := l.sample(ctx, false)
		switch {
		case err != nil:
			return
		case pending == 0:
			l.out.printf("lag", "%s: the burst drained within %s of its commit", line, time.Since(committed).Round(time.Millisecond))
			return
		case lines < burstLines:
			l.out.printf("lag", "%s", line)
			lines++
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// sample reads the status and the metrics and formats them as one line.
// The relay refreshes its outbox_lag_seconds gauge every few seconds only,
// too seldom to follow a burst: withGauge leaves it out then.
func (l *lagReporter) sample(ctx context.Context, withGauge bool) (line string, pending int64, err error) {
	qctx, cancel := context.WithTimeout(ctx, lagQueryTimeout)
	defer cancel()
	st, err := relay.ReadStatus(qctx, l.pool, l.table)
	if err != nil {
		return "", 0, err
	}
	line = fmt.Sprintf("pending=%d oldest=%dms", st.Pending, int64(st.OldestPendingAgeSeconds*1000))
	if st.Dead > 0 {
		line += fmt.Sprintf(" dead=%d", st.Dead)
	}
	if l.metricsAddr == "" {
		return line + " (metrics off)", st.Pending, nil
	}
	m, err := l.scrape(qctx)
	if err != nil {
		return line + " (metrics unavailable)", st.Pending, nil
	}
	if v, ok := m[metricsPublished]; ok {
		line += fmt.Sprintf(" published_total=%.0f", v)
	}
	if v, ok := m[metricsLag]; ok && withGauge {
		line += fmt.Sprintf(" lag_seconds=%.3f", v)
	}
	return line, st.Pending, nil
}

// scrape reads the relay's /metrics.
func (l *lagReporter) scrape(ctx context.Context) (map[string]float64, error) {
	host := l.metricsAddr
	if strings.HasPrefix(host, ":") {
		host = "127.0.0.1" + host
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body, metricsPublished, metricsLag)
}

// parseMetrics reads the samples of the named metrics from Prometheus text
// format, summed over their label sets. Metrics that are absent are absent
// from the result.
func parseMetrics(r io.Reader, names ...string) (map[string]float64, error) {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	got := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if !want[name] {
			continue
		}
		if strings.HasPrefix(rest, "{") {
			i := strings.LastIndexByte(rest, '}')
			if i < 0 {
				continue
			}
			rest = rest[i+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		got[name] += v
	}
	return got, sc.Err()
}
