package inbox_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// BenchmarkConsumerTx measures what the claim adds to a consumer's
// transaction: begin, one insert (the work), commit, without and with the
// claim first, from one connection and from 8 at once. Compare msgs/s of
// the two variants:
//
//	go test -run '^$' -bench ConsumerTx -benchtime 3s ./inbox/
func BenchmarkConsumerTx(b *testing.B) {
	const conns = 8
	env := testenv.New(b, testenv.WithoutMigrate())
	ctx := context.Background()
	tbl := schema.Table{Schema: env.Name, Name: inbox.TableDefault}
	if err := inbox.Migrate(ctx, testenv.ConnAt(b, env.URL), tbl); err != nil {
		b.Fatal(err)
	}
	effects := pgx.Identifier{env.Name, "effects"}.Sanitize()
	if _, err := env.Pool.Exec(ctx, "create table "+effects+" (message_id uuid not null, at timestamptz not null default now())"); err != nil {
		b.Fatal(err)
	}
	ib := inbox.New(tbl)
	cfg, err := pgxpool.ParseConfig(env.URL)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = conns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	one := func(claim bool) error {
		id := newIDs(1)[0]
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if claim {
			if _, err := ib.Claim(ctx, tx, "bench", id); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, "insert into "+effects+" (message_id) values ($1)", id); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
	for _, parallel := range []bool{false, true} {
		for _, claim := range []bool{false, true} {
			name := map[bool]string{false: "plain", true: "claim"}[claim]
			if parallel {
				name += fmt.Sprintf("/%dconns", conns)
			}
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				start := time.Now()
				if parallel {
					b.SetParallelism(max(1, conns/runtime.GOMAXPROCS(0))) // about conns goroutines
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := one(claim); err != nil {
								b.Error(err)
								return
							}
						}
					})
				} else {
					for b.Loop() {
						if err := one(claim); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			})
		}
	}
}
