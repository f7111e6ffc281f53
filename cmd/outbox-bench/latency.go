package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
)

// latencies pairs each message's commit time with its receipt time. Either
// may be known first: a fast relay delivers before the writer's commit call
// has returned.
type latencies struct {
	mu        sync.Mutex
	committed map[string]time.Time
	received  map[string]time.Time
	got       []time.Duration
}

func newLatencies() *latencies {
	return &latencies{committed: map[string]time.Time{}, received: map[string]time.Time{}}
}

func (l *latencies) commit(id string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.received[id]; ok {
		delete(l.received, id)
		l.got = append(l.got, max(0, r.Sub(at)))
		return
	}
	l.committed[id] = at
}

func (l *latencies) receive(d amqp.Delivery) {
	at := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.committed[d.MessageId]; ok {
		delete(l.committed, d.MessageId)
		l.got = append(l.got, max(0, at.Sub(c)))
		return
	}
	l.received[d.MessageId] = at
}

// take returns the latencies paired since the last take, sorted.
func (l *latencies) take() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	got := l.got
	l.got = nil
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	return got
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

// insertOne commits one row into table (quoted) and records its commit
// time.
func (b *bench) insertOne(ctx context.Context, db *pgxpool.Pool, table string, lat *latencies) error {
	var id string
	if err := db.QueryRow(ctx, "insert into "+table+" (routing_key, payload) values ($1, $2) returning message_id::text",
		b.queue, b.payload).Scan(&id); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	lat.commit(id, time.Now())
	return nil
}

// idleLatency writes single events into an idle relay and times commit →
// consumer receipt; then it counts the relay's queries while idle.
func (b *bench) idleLatency(ctx context.Context, rep *report) error {
	lat := newLatencies()
	c, err := b.consume(ctx, lat.receive)
	if err != nil {
		return err
	}
	defer c.close()
	stop, err := b.startRelay(ctx)
	if err != nil {
		return err
	}
	defer stop()
	pool, err := b.pool(ctx, 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := b.waitIdle(ctx); err != nil {
		return err
	}
	base := c.n.Load()
	for i := 0; i < b.o.events; i++ {
		if err := b.insertOne(ctx, pool, b.table.Ident(), lat); err != nil {
			return err
		}
		if err := c.waitFor(ctx, base+int64(i)+1, 10*time.Second); err != nil {
			return fmt.Errorf("idle latency: %w", err)
		}
		time.Sleep(b.o.interval)
	}
	got := lat.take()
	p99 := quantile(got, 0.99)
	rep.add(fmt.Sprintf("idle latency, %d events %s apart", b.o.events, b.o.interval),
		fmt.Sprintf("p50 %s  p99 %s  max %s", ms(quantile(got, 0.5)), ms(p99), ms(got[len(got)-1])), "", "",
		"p99 <= 5ms", p99 <= 5*time.Millisecond)

	// Idle cost: the relay's transactions per second on the bench database
	// once it sleeps on LISTEN, read from another database so that the
	// bench's own reads do not count. A session reports its statistics at
	// most once a second, and an idle one within idleStatsFlush, so the
	// window starts that long after the last activity.
	pool.Close()
	if err := b.waitIdle(ctx); err != nil {
		return err
	}
	const window = 30 * time.Second
	time.Sleep(idleStatsFlush)
	before, err := b.xacts(ctx)
	if err != nil {
		return err
	}
	time.Sleep(window)
	after, err := b.xacts(ctx)
	if err != nil {
		return err
	}
	qps := float64(after-before) / window.Seconds()
	rep.add("relay queries while idle", fmt.Sprintf("%.1f/s", qps), "poll 1/s, look (the keep-alive) 0.25/s, gauges 0.1/s", "", "<= ~1/s", qps <= 1.5)
	return nil
}

// idleStatsFlush is PostgreSQL's PGSTAT_IDLE_INTERVAL (10s), plus leeway:
// an idle session has reported its statistics by then.
const idleStatsFlush = 11 * time.Second

// xacts returns the bench database's committed and rolled-back transactions
// so far, read on the admin connection (another database).
func (b *bench) xacts(ctx context.Context) (int64, error) {
	if _, err := b.admin.Exec(ctx, "select pg_stat_clear_snapshot()"); err != nil {
		return 0, err
	}
	var n int64
	err := b.admin.QueryRow(ctx, "select xact_commit + xact_rollback from pg_stat_database where datname = $1", b.dbName).Scan(&n)
	return n, err
}

// steady writes rows at a fixed rate from concurrent writers for a while,
// and reports the latency and whether the relay kept up.
func (b *bench) steady(ctx context.Context, rep *report) error {
	lat, rows, err := b.runSteady(ctx, b.o.rate, b.o.steadyFor, nil)
	if err != nil {
		return err
	}
	p99 := quantile(lat, 0.99)
	rep.add(fmt.Sprintf("steady %d/s for %s, %d writers", b.o.rate, b.o.steadyFor, steadyWriters),
		fmt.Sprintf("p50 %s  p99 %s  max %s", ms(quantile(lat, 0.5)), ms(p99), ms(lat[len(lat)-1])),
		fmt.Sprintf("%d rows, all received", rows), "", "p99 <= 50ms", p99 <= 50*time.Millisecond)
	return nil
}

const steadyWriters = 8

// runSteady writes rate rows a second for d with the relay running in
// this process, and waits until all arrived. If tick is set it is called
// every minute with that minute's latencies.
func (b *bench) runSteady(ctx context.Context, rate int, d time.Duration, tick func(minute int, lat []time.Duration) error) ([]time.Duration, int, error) {
	lat := newLatencies()
	c, err := b.consume(ctx, lat.receive)
	if err != nil {
		return nil, 0, err
	}
	defer c.close()
	stop, err := b.startRelay(ctx)
	if err != nil {
		return nil, 0, err
	}
	defer stop()
	return b.steadyWrites(ctx, steadyLoad{table: b.table.Ident(), rate: rate, writers: steadyWriters, d: d}, lat, c, tick)
}

// steadyLoad is what steadyWrites writes: rate one-row transactions a
// second into table (quoted), from writers connections, for d.
type steadyLoad struct {
	table   string
	rate    int
	writers int
	d       time.Duration
}

// writerAppName is the application_name of the steady writers'
// connections.
const writerAppName = "outbox-bench-writer"

// steadyWrites writes the load, and waits until the consumer c, which
// feeds lat, has received every row. Its writers' connections are closed
// when it returns. If tick is set it is called every minute with that
// minute's latencies. It returns the latencies, sorted, and the rows
// written.
func (b *bench) steadyWrites(ctx context.Context, load steadyLoad, lat *latencies, c *consumer, tick func(minute int, lat []time.Duration) error) ([]time.Duration, int, error) {
	cfg, err := pgxpool.ParseConfig(b.dbURL)
	if err != nil {
		return nil, 0, err
	}
	cfg.MaxConns = int32(load.writers)
	cfg.ConnConfig.RuntimeParams["application_name"] = writerAppName
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, 0, err
	}
	defer pool.Close()

	base := c.n.Load()
	wctx, cancel := context.WithTimeout(ctx, load.d)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, load.writers)
	var written sync.Map
	interval := time.Duration(float64(time.Second) * float64(load.writers) / float64(load.rate))
	for w := 0; w < load.writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the writers over the interval; each writes at once,
			// then at every tick, so that a short run writes rate x d rows
			// too.
			select {
			case <-wctx.Done():
			case <-time.After(interval * time.Duration(w) / time.Duration(load.writers)):
			}
			t := time.NewTicker(interval)
			defer t.Stop()
			n := 0
			for wctx.Err() == nil {
				if err := b.insertOne(ctx, pool, load.table, lat); err != nil {
					errs <- err
					return
				}
				n++
				select {
				case <-wctx.Done():
				case <-t.C:
				}
			}
			written.Store(w, n)
		}()
	}
	var all []time.Duration
	if tick != nil {
		t := time.NewTicker(time.Minute)
		for minute := 1; ; minute++ {
			select {
			case <-wctx.Done():
			case <-t.C:
				got := lat.take()
				all = append(all, got...)
				if err := tick(minute, got); err != nil {
					cancel()
				}
				continue
			}
			break
		}
		t.Stop()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, 0, err
	}
	total := 0
	written.Range(func(_, v any) bool { total += v.(int); return true })
	if err := c.waitFor(ctx, base+int64(total), 10*time.Second); err != nil {
		return nil, 0, fmt.Errorf("steady: not every row arrived: %w", err)
	}
	all = append(all, lat.take()...)
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return all, total, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }
