package relay

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/schema"
)

// RelayStatus is a live relay of the table, by its LISTEN session.
type RelayStatus struct {
	PID int32 `json:"pid"`
	// ApplicationName is the session's: "<name>@<host>", followed by
	// " amqp=<host:port>" once the relay has a broker connection (at most
	// 63 bytes: PostgreSQL's limit).
	ApplicationName string `json:"application_name"`
	// Name is ApplicationName up to the broker node, and Broker that
	// node, "" while the relay has no broker connection.
	Name       string    `json:"name"`
	Broker     string    `json:"broker"`
	ClientAddr string    `json:"client_addr"`
	Since      time.Time `json:"backend_start"`
	// Member says the relay may own partitions: it has a broker
	// connection and holds the table's members lock.
	Member bool `json:"member"`
	// Owned are the partitions whose lock the session holds, ascending.
	Owned []int `json:"partitions_owned"`
}

// PartitionStatus is the breakdown of Status for one partition.
type PartitionStatus struct {
	Partition int `json:"partition"`
	// Owner is the pid of the session holding the partition's lock (see
	// Status.Relays), or nil: no relay claims its rows.
	Owner     *int32 `json:"owner_pid"`
	Pending   int64  `json:"pending"`
	Available int64  `json:"available"`
	Dead      int64  `json:"dead"`
	// OldestPendingAgeSeconds is the age of the partition's oldest pending
	// row that is available for publishing; 0 when there is none.
	OldestPendingAgeSeconds float64 `json:"oldest_pending_age_seconds"`
}

// readRelays fills st's relays, the owners of its partitions and the
// leader (partition 0's owner) from the sessions holding the table's
// relays, members and partition locks (see share.go).
func readRelays(ctx context.Context, db Querier, t schema.Table, st *Status) error {
	keys, part := groupLockKeys(t, st.Partitions)
	relaysKey, membersKey := keys[0], keys[1]
	rows, err := db.Query(ctx, `select `+groupLockKey+`, a.pid, coalesce(a.application_name, ''),
       coalesce(host(a.client_addr), 'local'), a.backend_start
  from pg_locks l join pg_stat_activity a on a.pid = l.pid
 where `+groupLocksHeld+`
 order by a.pid`, keys)
	if err != nil {
		return err
	}
	byPID := map[int32]*RelayStatus{}
	var key int64
	var r RelayStatus
	_, err = pgx.ForEachRow(rows, []any{&key, &r.PID, &r.ApplicationName, &r.ClientAddr, &r.Since}, func() error {
		rs := byPID[r.PID]
		if rs == nil {
			rs = &RelayStatus{PID: r.PID, ApplicationName: r.ApplicationName, ClientAddr: r.ClientAddr, Since: r.Since,
				Owned: []int{}}
			rs.Name, rs.Broker, _ = strings.Cut(r.ApplicationName, " amqp=")
			byPID[r.PID] = rs
		}
		switch key {
		case relaysKey:
		case membersKey:
			rs.Member = true
		default:
			p := part[key]
			rs.Owned = append(rs.Owned, p)
			pid := r.PID
			st.ByPartition[p].Owner = &pid
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, rs := range byPID {
		slices.Sort(rs.Owned)
		st.Relays = append(st.Relays, *rs)
	}
	slices.SortFunc(st.Relays, func(a, b RelayStatus) int { return cmp.Compare(a.PID, b.PID) })
	if o := st.ByPartition[0].Owner; o != nil {
		rs := byPID[*o]
		st.Leader = &Leader{PID: rs.PID, ApplicationName: rs.ApplicationName, ClientAddr: rs.ClientAddr, Since: rs.Since}
	}
	return nil
}
