package relay

import (
	"context"
	"time"
)

// The loop's seams: the three small interfaces it drives, and a clock. The
// real implementations are pgStore, amqpPublisher and pgListener; the loop's
// unit tests (loop_test.go) drive it with fakes, without any server.

// store is the outbox table as the loop sees it (pgStore).
type store interface {
	// Claim claims up to limit rows (see claimQuery). An empty claim holds
	// nothing and needs no Settle.
	Claim(ctx context.Context, limit int) (*claim, error)
	// Settle records the results of a claim and, with next > 0, claims the
	// next batch in the same round trip. A failed settle claims nothing.
	Settle(ctx context.Context, c *claim, results []Result, next int) (st settled, nc *claim, settleErr, claimErr error)
	// SetWaiting raises the wake-up flag that makes writers notify, or
	// lowers it unless another relay sleeps.
	SetWaiting(ctx context.Context, waiting bool) error
	// Arm raises the flag and waits briefly for the writers that did not
	// notify; false: one is still in its transaction (see pgStore.Arm).
	Arm(ctx context.Context) (bool, error)
	// Fence waits up to wait for the claims made before it on partitions
	// to settle.
	Fence(ctx context.Context, wait time.Duration, partitions []int) error
	// SetPartitions gives the table's P, and whether the table records it
	// (migration 007).
	SetPartitions(p int, recorded bool)
	// SetOwner gives the backend pid of the session holding the locks of
	// the partitions owned, and those partitions (ascending): claims take
	// rows of them only, and stop once the session is gone. Pid 0 claims
	// unchecked.
	SetOwner(pid int32, owned []int)
	// Warm opens the connections a leader's drain uses before rows wait
	// on them; a failure is left to the claims.
	Warm(ctx context.Context)
}

// publisher is the broker as the loop sees it (amqpPublisher). It sends
// what it is given: which rows go out is decided by keyOrder.
type publisher interface {
	// Connected reports whether the connection and channel are up.
	Connected() bool
	// Connect (re)connects, to the next node of the list.
	Connect(ctx context.Context) error
	// StartAt makes the next Connect dial node i of the list.
	StartAt(i int)
	// Node names the node last dialled (host:port).
	Node() string
	// Close drops the connection. It never fails.
	Close()
	// Blocked reports whether the broker blocks publishing.
	Blocked() bool
	// Watch bounds the waits for confirms of what is sent until stop:
	// no confirm for the confirm timeout, or ctx done, breaks the
	// connection.
	Watch(ctx context.Context) (stop func())
	// Prepare readies a batch for Check and Send (e.g. looks up its
	// exchanges). An error means nothing of it can be sent now.
	Prepare(ctx context.Context, b *batch) error
	// Check reports whether row i of a prepared batch can be sent; if the
	// client library or the broker would refuse it, it fails it in
	// b.results. keyOrder asks only for rows it would send.
	Check(b *batch, i int) bool
	// Send publishes the rows b.send marks, in order, without waiting for
	// their confirms. It stops at the first failure (b.err).
	Send(ctx context.Context, b *batch)
	// Await waits for the confirms of a sent batch and fills b.results. An
	// error means the connection or channel failed.
	Await(b *batch) error
	// RowRefused reports whether the last failure was the broker refusing
	// one message over an open connection: reconnect at once.
	RowRefused() bool
}

// listener is the LISTEN session, which also holds the members lock and the
// locks of the partitions the relay owns (pgListener).
type listener interface {
	// Connected reports whether the session is up.
	Connected() bool
	// Connect opens and checks the session (a *setupError says why it
	// cannot be used) and LISTENs.
	Connect(ctx context.Context) error
	// Close closes the session, releasing its locks.
	Close(ctx context.Context)
	// PID is the server's backend pid of the session; 0 when down.
	PID() int32
	// Look reads the table's P, relays, members and partition owners.
	Look(ctx context.Context) (groupView, error)
	// Take tries to take partition p's lock on the session.
	Take(ctx context.Context, p int) (bool, error)
	// Release gives partition p's lock up.
	Release(ctx context.Context, p int) error
	// Member joins or leaves the table's members.
	Member(ctx context.Context, in bool) error
	// SetBroker shows the broker node the relay publishes to in the
	// session's application_name, for status.
	SetBroker(ctx context.Context, node string) error
	// Sleeper records on the session that the relay sleeps on LISTEN, from
	// before it raises the wake-up flag until it lowers it.
	Sleeper(ctx context.Context, asleep bool) error
	// SetOwned gives the partitions the relay owns, before it claims for
	// them: Wait wakes for rows of those only. An error means the session
	// failed.
	SetOwned(ctx context.Context, owned []int) error
	// Claimed gives the snapshot of a claim that took rows, as
	// pg_current_snapshot() prints it: Wait does not wake for rows of
	// transactions it saw committed.
	Claimed(snapshot string)
	// GroupChanged reports whether another relay announced a change of
	// the group since it was last asked.
	GroupChanged() bool
	// Wait sleeps until a notification for this relay (true), the timeout
	// or ctx. An error means the session broke and was closed.
	Wait(ctx context.Context, timeout time.Duration) (bool, error)
	// Ping checks the session, closing it if it broke.
	Ping(ctx context.Context) error
}

// clock is time as the loop sees it: tests pass one that does not sleep.
type clock interface {
	Now() time.Time
	// Sleep waits for d or until ctx is done, and reports whether d passed.
	Sleep(ctx context.Context, d time.Duration) bool
}

// wallClock is the real clock.
type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) Sleep(ctx context.Context, d time.Duration) bool { return sleep(ctx, d) }
