package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/schema"
)

// The listener's part in sharing the table (see share.go): its session
// holds the members lock and the locks of the partitions the relay owns,
// so all of them end with it.

// groupPayload is the payload of the notification a relay sends when it
// joins or leaves the members or releases partitions, so that the others
// look at once rather than at their next look.
const groupPayload = "outbox-relay group changed"

// groupLockKeys returns the keys of the locks that show the relays of table
// t (keys[0]), its members (keys[1]) and the owners of its p partitions,
// and the partition of each of those last keys.
func groupLockKeys(t schema.Table, p int) (keys []int64, partition map[int64]int) {
	keys = []int64{t.LockKey("relays"), t.LockKey("members")}
	partition = make(map[int64]int, p)
	for i, k := range t.PartitionLockKeys("leader", p) {
		partition[k] = i
		keys = append(keys, k)
	}
	return keys, partition
}

// groupLockKey is the 64-bit key of the advisory lock aliased l in
// pg_locks, which shows it as two oids (see lockParts): << wraps in bigint
// as the key did. groupLocksHeld selects the granted advisory locks of this
// database among the keys of $1 (see groupLockKeys).
const (
	groupLockKey   = `((l.classid::bigint << 32) | l.objid::bigint)`
	groupLocksHeld = `l.locktype = 'advisory' and l.granted and l.objsubid = 1
   and l.database = (select oid from pg_database where datname = current_database())
   and ` + groupLockKey + ` = any($1::bigint[])`
)

// Look reads the table's P and, from pg_locks, its relays, members and
// partition owners. Once the table is known to record P, it does so in one
// statement, with the keys of the P of the last look (and again, should
// migrate have changed it since), which also proves the session the same
// backend, as a ping does: an idle relay looks every lookAlone, and its
// looks are most of what it asks while idle.
func (l *pgListener) Look(ctx context.Context) (groupView, error) {
	if !l.Connected() {
		return groupView{}, errors.New("listener not connected")
	}
	if l.partitions == 0 {
		p, recorded, err := schema.ReadPartitions(ctx, simpleConn{l.conn}, l.table)
		if err != nil {
			return groupView{}, err
		}
		if !recorded {
			return l.lookAt(ctx, groupView{partitions: p}, `select 0, 0, `+groupLockKey+`, l.pid from pg_locks l
 where `+groupLocksHeld+`
 order by l.pid`)
		}
		l.partitions = p
	}
	sql := `select s.partitions, pg_backend_pid(), x.key, x.pid
  from (select partitions from ` + l.table.Derived("settings") + `) s
  left join lateral (select ` + groupLockKey + ` as key, l.pid from pg_locks l
                      where ` + groupLocksHeld + `) x on true
 order by x.pid`
	for {
		v, err := l.lookAt(ctx, groupView{partitions: l.partitions, settings: true}, sql)
		if err != nil || v.partitions == l.partitions {
			return v, err
		}
		l.partitions = v.partitions
	}
}

// lookAt runs sql, a look with the keys of v's P ($1), which returns the
// table's P (0: not read) and the session's backend pid (0: not read) in
// every row beside each lock's key and holder, and fills v in. v.partitions
// comes back as the P read, for Look to compare.
func (l *pgListener) lookAt(ctx context.Context, v groupView, sql string) (groupView, error) {
	keys, part := groupLockKeys(l.table, v.partitions)
	v.owners = make([]int32, v.partitions)
	rows, err := l.conn.Query(ctx, sql, simple, keys)
	if err != nil {
		return groupView{}, fmt.Errorf("look at the table's relays: %w", err)
	}
	var p, backend int32
	var key *int64
	var pid *int32
	read := v.partitions
	_, err = pgx.ForEachRow(rows, []any{&p, &backend, &key, &pid}, func() error {
		if p != 0 {
			read = int(p)
		}
		if backend != 0 && backend != l.pid {
			return poolerError(fmt.Sprintf("the LISTEN connection moved from server backend %d to %d", l.pid, backend))
		}
		switch {
		case key == nil:
		case *key == keys[0]:
			v.relays = append(v.relays, *pid)
		case *key == keys[1]:
			v.members = append(v.members, *pid)
		default:
			v.owners[part[*key]] = *pid
		}
		return nil
	})
	if err != nil {
		return groupView{}, fmt.Errorf("look at the table's relays: %w", err)
	}
	if backend != 0 {
		l.lastPing = time.Now()
	}
	if read != v.partitions {
		return groupView{partitions: read}, nil
	}
	l.drainNotifications()
	return v, nil
}

// Take tries to take partition p's lock, and reports whether it holds it.
func (l *pgListener) Take(ctx context.Context, p int) (bool, error) {
	if !l.Connected() {
		return false, errors.New("listener not connected")
	}
	var got bool
	if err := l.conn.QueryRow(ctx, "select pg_try_advisory_lock($1)", simple, l.table.PartitionLockKey("leader", p)).Scan(&got); err != nil {
		return false, fmt.Errorf("take partition %d: %w", p, err)
	}
	return got, nil
}

// Release gives partition p's lock up and tells the other relays.
func (l *pgListener) Release(ctx context.Context, p int) error {
	if !l.Connected() {
		return errors.New("listener not connected")
	}
	var held bool
	if err := l.conn.QueryRow(ctx, "select pg_advisory_unlock($1), pg_notify($2, $3) is null", simple,
		l.table.PartitionLockKey("leader", p), l.channel, groupPayload).Scan(&held, nil); err != nil {
		return fmt.Errorf("release partition %d: %w", p, err)
	}
	if !held {
		return fmt.Errorf("release partition %d: the session did not hold its lock", p)
	}
	return nil
}

// Member joins (in) or leaves the table's members, the relays that may own
// partitions, and tells the other relays.
func (l *pgListener) Member(ctx context.Context, in bool) error {
	if err := l.sharedLock(ctx, "members", in, true); err != nil {
		return fmt.Errorf("join or leave the table's members: %w", err)
	}
	return nil
}

// sharedLock takes (hold) or gives up the table's lock named purpose,
// shared, on the session, telling the other relays with notify.
func (l *pgListener) sharedLock(ctx context.Context, purpose string, hold, notify bool) error {
	if !l.Connected() {
		return errors.New("listener not connected")
	}
	f := "pg_advisory_lock_shared"
	if !hold {
		f = "pg_advisory_unlock_shared"
	}
	q, args := "select "+f+"($1)::text", []any{simple, l.table.LockKey(purpose)}
	if notify {
		q, args = q+", pg_notify($2, $3)", append(args, l.channel, groupPayload)
	}
	_, err := l.conn.Exec(ctx, q, args...)
	return err
}

// SetBroker shows node, the broker node the relay publishes to, after the
// relay's name in the session's application_name (at most 63 bytes).
func (l *pgListener) SetBroker(ctx context.Context, node string) error {
	if !l.Connected() {
		return errors.New("listener not connected")
	}
	name := l.config.RuntimeParams["application_name"] + " amqp=" + node
	if len(name) > 63 {
		name = name[:63]
	}
	if _, err := l.conn.Exec(ctx, "select set_config('application_name', $1, false)", simple, name); err != nil {
		return fmt.Errorf("show broker node: %w", err)
	}
	return nil
}

// Sleeper takes (asleep) or gives up the table's sleepers lock, shared:
// held from before the relay raises the wake-up flag until it lowers it,
// so that no other relay lowers it meanwhile (see pgStore.queueFlag).
func (l *pgListener) Sleeper(ctx context.Context, asleep bool) error {
	if err := l.sharedLock(ctx, "sleepers", asleep, false); err != nil {
		return fmt.Errorf("record asleep=%t: %w", asleep, err)
	}
	return nil
}

// SetOwned gives the partitions the relay owns. With more than one
// partition the session listens on the channels of those and no others
// (migration 012: Table.PartitionChannel), so that rows of other
// partitions do not wake the relay's process; Wait also ignores a
// notification naming another partition, as a table migrated to 011 sends
// them all on the table's channel. It runs before the first claim of a
// partition gained: a row committed after that claim began notifies.
func (l *pgListener) SetOwned(ctx context.Context, owned []int) error {
	l.owned = make(map[int]bool, len(owned))
	for _, p := range owned {
		l.owned[p] = true
	}
	if !l.Connected() {
		return errors.New("listener not connected")
	}
	var stmts []string
	listening := make(map[int]bool, len(owned))
	if l.partitions > 1 { // with one partition, the table's channel is its
		for p := range l.owned {
			listening[p] = true
			if !l.listening[p] {
				stmts = append(stmts, "listen "+pgx.Identifier{l.table.PartitionChannel(p)}.Sanitize())
			}
		}
	}
	for p := range l.listening {
		if !listening[p] {
			stmts = append(stmts, "unlisten "+pgx.Identifier{l.table.PartitionChannel(p)}.Sanitize())
		}
	}
	if len(stmts) == 0 {
		return nil
	}
	slices.Sort(stmts)
	if _, err := l.conn.Exec(ctx, strings.Join(stmts, "; "), simple); err != nil {
		return fmt.Errorf("listen on the partitions' channels: %w", err)
	}
	l.listening = listening
	return nil
}

// wakes reports whether notification n wakes the relay: an announced
// change of the group, a row of a partition it owns that the last claim
// could not see, or anything else (an empty payload: `dead retry`, after a
// transaction's 16th row). It notes a change of the group.
//
// The trigger's payload is the row's partition (migration 007) and, since
// 012, ":" and the writer's transaction id. A transaction that the
// snapshot of the relay's last claim saw committed (see Claimed) had its
// rows taken by that claim: its notification, read only now, would make
// an empty claim.
func (l *pgListener) wakes(n *pgconn.Notification) bool {
	if n.Payload == groupPayload {
		if n.PID != uint32(l.pid) {
			l.changed = true
		}
		return true
	}
	part, xid, withXID := strings.Cut(n.Payload, ":")
	p, err := strconv.Atoi(part)
	if err != nil {
		return true
	}
	if !l.owned[p] {
		return false
	}
	x, err := strconv.ParseUint(xid, 10, 64)
	return !withXID || err != nil || !l.claimed.sees(x)
}

// Claimed gives the snapshot of the relay's latest claim that took rows
// (see claimQuery), as pg_current_snapshot() prints it: a notification of
// a transaction it saw committed does not wake Wait. Every partition the
// relay owns was claimed for then, since a claim follows every gain before
// the relay waits again. A snapshot that does not parse sees nothing.
func (l *pgListener) Claimed(s string) { l.claimed = parseSnapshot(s) }

// drainNotifications takes the notifications that arrived with the last
// query's answer, noting an announced change of the group. A relay that
// claims without sleeping on LISTEN receives the notifications sent for
// other relays all the same; they must not pile up in its memory.
func (l *pgListener) drainNotifications() {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for {
		n, err := l.conn.WaitForNotification(done)
		if err != nil {
			return
		}
		l.wakes(n)
	}
}

// GroupChanged reports whether another relay announced a change of the
// group since the last call.
func (l *pgListener) GroupChanged() bool {
	c := l.changed
	l.changed = false
	return c
}

// simpleConn runs QueryRow on a connection without prepared statements.
type simpleConn struct{ conn *pgx.Conn }

func (q simpleConn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return q.conn.QueryRow(ctx, sql, append([]any{simple}, args...)...)
}
