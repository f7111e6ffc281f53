// Package relay is the engine of outbox-relay: it moves committed rows of an
// outbox table to RabbitMQ with publisher confirms, and deletes a row only
// after the broker confirmed it. New checks a Config; Run relays until its
// context ends.
//
// The package is split by seam: the store (PostgreSQL: claim, settle, the
// wake-up flag, the fence; store.go, claim.go, arm.go, pool.go), the
// listener (the LISTEN session, which also holds the relay's membership and
// partition locks; listener.go, members.go, session.go), the publisher
// (AMQP: connection, check, send and await, watchdog; publisher.go,
// send.go, watchdog.go) and the loop that joins them (loop.go,
// connections.go, share.go, pipeline.go, order.go). The loop sees the
// other three through small interfaces (seams.go) and a clock: runOnce
// makes one decision, and its tests (loop_test.go, share_loop_test.go)
// drive it with fakes.
//
// Every goroutine has an owner that stops it: Run starts the loop's work,
// the gauges and the vacuum; the publisher's connection has a goroutine
// following its blocked notifications, ended with the connection, and a
// drain has a watchdog. State the loop keeps is its own; what other
// goroutines read of it goes through progress (atomics) and the metrics.
//
// # States
//
//	connecting ──listener up, broker up, member──▶ standby ──partitions gained, fenced──▶ owner
//	    ▲                                              │                                   │
//	    └──────────── listener lost ───────────────────┴──── session lost, or none left ───┘
//
// An owner claims for the partitions it owns. It is idle (asleep on
// LISTEN), lingering (polling briefly after its last rows, or while a
// writer that did not notify is still in its transaction) or busy
// (draining batches). Without a broker connection, or while the broker
// blocks publishing, it claims nothing, and after brokerGone it gives its
// partitions up. On shutdown it stops claiming, waits up to
// ShutdownTimeout for the batches on the wire, settles them, hands its
// partitions over and returns.
//
// # Sessions
//
// The listener's session must be a PostgreSQL session of the relay's own:
// LISTEN and the session advisory lock die with it. After connecting, the
// listener reads its backend pid, has a pool session report its own pid and
// send a test notification, and waits for it (checkSession). A transaction
// pooler fails that whatever server connection it picks; a read-only server
// is refused too. Only then do the relay's sessions get their settings
// (keepalives, timeouts; see sessionSettings), so that nothing leaks into a
// pooler's shared connections.
//
// # Partitions, ownership and the fence
//
// Rows map to the table's P partitions (migration 007). A relay owns a
// partition while its LISTEN session holds the partition's session
// advisory lock; the members (relays with a broker connection) share the
// partitions by a rule every one of them computes alike from pg_locks
// (share.go). With P = 1, partition 0's lock is the table's leader lock of
// before: one relay leads, the others stand by. Every claim checks, in the
// same statement, that the session still lives (by a lock of its own,
// sessionLockKey) and so holds its locks, and that P has not changed, so a
// relay that lost them stops at its next claim. Every
// claim also holds its partitions' "in flight" locks shared until its
// batch is settled, and a relay that gains a partition takes that lock
// exclusively before its first claim of it (pgStore.Fence): it waits for
// the batches of the owner before it, so a handover cannot reorder a key.
//
// # Wake-up
//
// A writer's insert trigger notifies, at its commit, while the relay's
// wake-up flag (a sequence) is up, on the channel of the row's partition
// (migration 012), which only its owner listens on, naming the writer's
// transaction: a relay drops the notification of a transaction its last
// claim saw committed, as it took the rows then (pgListener.wakes). The
// relay raises the flag to sleep, then
// waits a few milliseconds for the transactions that wrote to the table
// while it was down, by taking the table's SHARE lock (pgStore.Arm), and
// stays awake while one is still open: no row waits for the poll however
// long its transaction ran after the insert, and writers pay nothing for
// it. When rows arrive sparsely the flag stays up and the relay sleeps on
// LISTEN between batches; when they arrive densely it lowers the flag,
// unless another relay sleeps (the sleepers lock, see queueFlag), claims at
// a steady pace and lingers a little before raising it again (wake.go).
// The poll interval is a safety net.
//
// # Claim, publish, settle
//
// A claim takes the available rows with the lowest ids, FOR UPDATE SKIP
// LOCKED, in one walk of claim_idx; rows delayed or backing off are
// promoted into it once due. Payloads are loaded up to BatchBytes (a larger
// row alone); rows past that come back deferred and are claimed again.
// Two batches are kept on the wire: while one is confirmed, the one before
// it is settled and the next claimed in a single round trip (drain). Acked
// rows are deleted; rows the broker refused (nack, return, missing
// exchange, a value AMQP cannot carry) get an attempt and a back-off, and
// are parked dead after MaxAttempts. Connection trouble is never the row's
// fault: unconfirmed rows are simply published again.
//
// # Per-key order
//
// Rows of a partition_key go out in id order. The claim skips a row while
// an earlier row of its key is delayed or backing off (keyFree); within a
// drain, keyOrder (order.go, where the rule is stated in full) holds back
// rows behind a row held or refused before it was sent, stops claims while
// a batch on the wire holds rows back, and counts a row confirmed after an
// earlier row of its key failed once sent: an order break,
// outbox_order_breaks_total.
//
// # Failures
//
// Every wait is bounded: the watchdog breaks a broker connection that
// confirms nothing for ConfirmTimeout, statements have a deadline, and
// connections are rebuilt with capped exponential back-off. An owner that
// claims nothing while rows wait says so (outbox_stalled), and a failed
// batch makes the relay check its listener at once, so a lost database is
// reported as lost partitions, not hidden behind retries.
package relay
