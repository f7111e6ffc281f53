package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/schema"
)

// Querier is what ReadStatus needs: a *pgx.Conn, *pgxpool.Pool or pgx.Tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Status is a snapshot of an outbox table, read straight from the database
// (no relay needs to run).
type Status struct {
	Table   string `json:"table"`
	Pending int64  `json:"pending"`
	// Available counts pending rows whose available_at has passed.
	Available int64 `json:"available"`
	Dead      int64 `json:"dead"`
	// OldestPendingAgeSeconds is the age of the oldest pending row that is
	// available for publishing: the relay's lag. 0 when there is none.
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
	// Leader describes the relay owning partition 0, or is nil: with one
	// partition, the relay that publishes (the table's leader lock is
	// partition 0's). See Relays and ByPartition for the others.
	Leader    *Leader          `json:"leader"`
	Exchanges []ExchangeStatus `json:"exchanges"`
	// Partitions is the table's number of partitions, P (1 for a table
	// before migration 007).
	Partitions int `json:"partitions"`
	// Relays are the table's live relays, by pid: the sessions that hold
	// its relays lock (each relay's LISTEN session) or a partition's lock.
	Relays []RelayStatus `json:"relays"`
	// ByPartition is the breakdown per partition, partition 0 first: P
	// entries.
	ByPartition []PartitionStatus `json:"by_partition"`
}

// Leader identifies the active relay by its PostgreSQL session.
type Leader struct {
	PID             int32     `json:"pid"`
	ApplicationName string    `json:"application_name"`
	ClientAddr      string    `json:"client_addr"`
	Since           time.Time `json:"backend_start"`
}

// ExchangeStatus is the per-exchange breakdown of Status.
type ExchangeStatus struct {
	Exchange                string  `json:"exchange"`
	Pending                 int64   `json:"pending"`
	Dead                    int64   `json:"dead"`
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
}

// ReadStatus reads the status of table t (resolved, see schema.Table.Resolve).
// Its counts scan the table's rows, once, so it costs in proportion to the
// backlog: fine for a command, not for a tight loop.
func ReadStatus(ctx context.Context, db Querier, t schema.Table) (Status, error) {
	st := Status{Table: t.String(), Exchanges: []ExchangeStatus{}, Relays: []RelayStatus{}}
	p, _, err := schema.ReadPartitions(ctx, db, t)
	if err != nil {
		return st, err
	}
	st.Partitions = p
	st.ByPartition = make([]PartitionStatus, p)
	for i := range st.ByPartition {
		st.ByPartition[i].Partition = i
	}
	if err := readCounts(ctx, db, t, &st); err != nil {
		return st, fmt.Errorf("read status of %s: %w", t, err)
	}
	if err := readRelays(ctx, db, t, &st); err != nil {
		return st, fmt.Errorf("read relays of %s: %w", t, err)
	}
	return st, nil
}

// readCounts counts st's rows per exchange and per partition of st's P, in
// one scan of the table, and adds them up.
func readCounts(ctx context.Context, db Querier, t schema.Table, st *Status) error {
	part, args := "0", []any{}
	if st.Partitions > 1 {
		part, args = t.Derived("partition")+"(partition_key, id, $1::integer)", []any{st.Partitions}
	}
	rows, err := db.Query(ctx, `select grouping(exchange) = 0, coalesce(exchange, ''), coalesce(part, 0),
       count(*) filter (where dead_at is null),
       count(*) filter (where dead_at is null and available_at <= now()),
       count(*) filter (where dead_at is not null),
       coalesce(extract(epoch from now() - min(created_at) filter (where dead_at is null and available_at <= now())), 0)::float8
  from (select exchange, dead_at, available_at, created_at, `+part+` as part
          from `+t.Ident()+`) o
 group by grouping sets ((exchange), (part))
 order by 1 desc, 2, 3`, args...)
	if err != nil {
		return err
	}
	var byExchange bool
	var exchange string
	var part32 int32
	var c PartitionStatus
	_, err = pgx.ForEachRow(rows, []any{&byExchange, &exchange, &part32, &c.Pending, &c.Available, &c.Dead, &c.OldestPendingAgeSeconds}, func() error {
		if !byExchange {
			if int(part32) >= len(st.ByPartition) {
				return fmt.Errorf("row in partition %d of %d", part32, len(st.ByPartition))
			}
			c.Partition = int(part32)
			c.Owner = st.ByPartition[c.Partition].Owner
			st.ByPartition[c.Partition] = c
			return nil
		}
		st.Exchanges = append(st.Exchanges, ExchangeStatus{Exchange: exchange, Pending: c.Pending, Dead: c.Dead,
			OldestPendingAgeSeconds: c.OldestPendingAgeSeconds})
		st.Pending += c.Pending
		st.Available += c.Available
		st.Dead += c.Dead
		st.OldestPendingAgeSeconds = max(st.OldestPendingAgeSeconds, c.OldestPendingAgeSeconds)
		return nil
	})
	return err
}
