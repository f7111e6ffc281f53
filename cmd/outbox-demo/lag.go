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
	burstSample      = 100 * time.Millisecond // after a burst or a restart, look this often
	burstLines       = 8                      // at most this many lines per burst or restart
	burstWatch       = 30 * time.Second       // give up following a burst or a restart after this
	pauseSample      = time.Second            // while the relay is stopped, look this often
	pauseWatch       = 5 * time.Minute        // give up following a pause after this
	lagQueryTimeout  = 2 * time.Second
	metricsPublished = "outbox_published_total"
	metricsLag       = "outbox_lag_seconds"
)

// lagEvent is something the lag reporter follows closely.
type lagEvent uint8

const (
	burstCommitted lagEvent = iota // follow the backlog until it drains
	relayStopped                   // sample every pauseSample until the relay starts
	relayStarting                  // follow the backlog until it drains
)

// notify tells the lag reporter about ev, unless its queue is full: the
// reporter is then busy, and the event only changes what it prints.
func notify(events chan<- lagEvent, ev lagEvent) {
	select {
	case events <- ev:
	default:
	}
}

// lagReporter prints the outbox's backlog as the database sees it
// (relay.ReadStatus, what `outbox-relay status` shows) and as the relay
// reports it on /metrics. After a burst, while the relay is stopped, and
// after it starts again, it looks closely.
type lagReporter struct {
	pool        *pgxpool.Pool
	table       schema.Table
	metricsAddr string // empty: the relay serves no metrics
	out         *printer
	events      <-chan lagEvent
	client      http.Client
}

// focus is what the reporter follows closely.
type focus struct {
	ev    lagEvent
	since time.Time
	lines int // printed so far
}

// run reports every lagInterval, and follows each event, until ctx is done.
func (l *lagReporter) run(ctx context.Context) error {
	tick := time.NewTicker(lagInterval)
	defer tick.Stop()
	var f *focus // nil: a line every lagInterval
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-l.events:
			if f != nil && f.ev != burstCommitted && ev == burstCommitted {
				break // the pause's or the restart's lines show the burst too
			}
			f = &focus{ev: ev, since: time.Now()}
			if ev == relayStopped {
				tick.Reset(pauseSample)
			} else {
				tick.Reset(burstSample)
			}
		case <-tick.C:
		}
		if f == nil {
			line, _, err := l.sample(ctx, true, false)
			switch {
			case ctx.Err() != nil:
				return nil // the demo is over: the line would be stale
			case err != nil:
				l.out.printf("lag", "no status: %v", err)
			default:
				l.out.printf("lag", "%s", line)
			}
			continue
		}
		if !l.follow(ctx, f) {
			f = nil
			tick.Reset(lagInterval)
		}
	}
}

// follow takes one sample for f, prints what is worth it, and reports
// whether to go on following.
func (l *lagReporter) follow(ctx context.Context, f *focus) bool {
	stopped := f.ev == relayStopped
	line, st, err := l.sample(ctx, false, stopped)
	switch {
	case ctx.Err() != nil:
		return false
	case err != nil:
		l.out.printf("lag", "no status: %v", err)
		return false
	case stopped:
		// Until the relay starts again, however long that takes.
		l.out.printf("lag", "%s", line)
		return time.Since(f.since) < pauseWatch
	case st.Available == 0:
		// Rows backing off or dead are not the relay's backlog: they wait
		// on purpose.
		what := "the burst drained within %s of its commit"
		if f.ev == relayStarting {
			what = "the backlog drained within %s of the restart"
		}
		l.out.printf("lag", "%s: "+what, line, time.Since(f.since).Round(time.Millisecond))
		return false
	case f.lines < burstLines:
		l.out.printf("lag", "%s", line)
		f.lines++
	}
	return time.Since(f.since) < burstWatch
}

// sample reads the status and the metrics and formats them as one line.
// The relay refreshes its outbox_lag_seconds gauge every few seconds only,
// too seldom to follow a burst: withGauge leaves it out then. While the
// relay is stopped, there are no metrics to read.
func (l *lagReporter) sample(ctx context.Context, withGauge, stopped bool) (line string, st relay.Status, err error) {
	qctx, cancel := context.WithTimeout(ctx, lagQueryTimeout)
	defer cancel()
	st, err = relay.ReadStatus(qctx, l.pool, l.table)
	if err != nil {
		return "", st, err
	}
	line = fmt.Sprintf("pending=%d oldest=%dms", st.Pending, int64(st.OldestPendingAgeSeconds*1000))
	if n := st.Pending - st.Available; n > 0 {
		line += fmt.Sprintf(" backing_off=%d", n)
	}
	if st.Dead > 0 {
		line += fmt.Sprintf(" dead=%d", st.Dead)
	}
	switch {
	case stopped:
		return line + " (relay stopped)", st, nil
	case l.metricsAddr == "":
		return line + " (metrics off)", st, nil
	}
	m, err := l.scrape(qctx)
	if err != nil {
		// The relay may be starting, or stopped: the table still tells.
		return line + " (metrics unavailable)", st, nil
	}
	if v, ok := m[metricsPublished]; ok {
		line += fmt.Sprintf(" published_total=%.0f", v)
	}
	if v, ok := m[metricsLag]; ok && withGauge {
		line += fmt.Sprintf(" lag_seconds=%.3f", v)
	}
	return line, st, nil
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
