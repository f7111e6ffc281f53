// Package faults is the fault-injection suite of outbox-relay: it runs the
// real relay binary against the real PostgreSQL and RabbitMQ, breaks things
// under load, and checks the first guarantee of DESIGN.md, that nothing
// committed is lost.
//
// The package holds only tests, behind the build tag faults, because they
// restart the shared broker, raise its resource alarms and terminate
// sessions: run them alone, never in parallel with other packages:
//
//	go test -race -tags faults -p 1 -count=1 -timeout 15m ./internal/faults/
//
// # A scenario
//
// Each test gets its own schema and migrated outbox table (internal/testenv),
// a durable topic exchange and a durable queue bound to it for every key.
// TestMain builds cmd/outbox-relay with -race once; every relay is that
// binary run as a process, with its own metrics address, killed in
// t.Cleanup if the test has not stopped it.
//
// A producer commits a few rows at a time through the outbox library, about
// 250 rows a second, and records the message_id of every transaction whose
// commit succeeded (a commit that fails has an unknown outcome: its rows may
// arrive, but are not counted as committed). Each row carries, in the header
// began_ns, when its transaction began. A consumer, which reconnects after
// the broker closes its connection or restarts, counts every delivery by
// message_id and acknowledges it only once counted, so that a broker restart
// cannot drop a message on its way to the consumer.
//
// The fault then strikes, once or several times: SIGKILL of the relay, of
// the leader among two or three relays, a broker-side close of the relay's
// AMQP connection, a broker restart, a broker node that accepts
// connections but never answers, pg_terminate_backend of the relay's
// sessions or of the leader's lock session alone, latency, resets, cuts,
// stalls that drop the traffic and freezes that hold it (a stopped proxy,
// testenv.Freeze) from a TCP proxy (toxiproxy, in-process) between the
// relay and either server, a broker memory alarm, poison rows mixed into the
// healthy stream, and each node in turn of a three-node RabbitMQ cluster
// stopped under three relays sharing a table and a quorum queue. That
// cluster (outbox-c1..3@localhost, AMQP ports 5681..5683) is started by
// .ci/services beside the default broker, which is not part of it.
//
// # What is measured
//
// After the last fault the producer stops and the test waits for every
// committed message_id. It fails if one is lost, if a message arrives that
// no committed transaction wrote, or if live rows remain in the table; rows
// parked dead are allowed only where the scenario inserts poison. It prints
// one line per scenario, in a fixed format, and TestMain prints them all
// again as a table at the end:
//
//	FAULT scenario=kill9 committed=5850 lost=0 duplicates=5 redelivered=0 reorders=0 dead=0 faults=5 recover=68ms max_latency=271ms
//
// duplicates counts deliveries of a message_id already received that the
// broker did not flag as redelivered: the relay published the row again,
// which at-least-once allows. redelivered counts the broker's own
// redeliveries to the consumer after its connection broke. recover is the
// longest, over the scenario's faults, of the time from the end of a fault
// until the consumer first receives a row whose transaction began after
// that moment: the relay is working again and has caught up with what was
// written during the fault. max_latency is the longest time from a row's
// transaction beginning to its first delivery. reorders counts first
// deliveries that arrived after a later row of the same partition key; the
// README promises none after a lost connection, and the test fails on any.
//
// Most faults strike right after a burst of a thousand rows, so that they
// hit a relay in the middle of full batches (publishing, awaiting confirms,
// settling) rather than an idle one. Burst rows count for loss, duplicates
// and order, not for latency or recovery.
//
// # Sockets, not names
//
// Other tests' relays share the servers and the relay's application_name
// and AMQP connection name. To hit exactly the relay under test, the suite
// reads the process's TCP sockets from /proc and matches their local ports
// against pg_stat_activity.client_port and the broker's peer_port.
//
// # A relay that does not recover
//
// When a relay does not recover in time, the test takes the stacks of its
// threads with gdb (if installed: a goroutine spinning on a CPU shows no
// stack otherwise), then sends SIGQUIT for the goroutine dump, and shows
// both with the relay's log.
//
// OUTBOX_FAULTS_BIN names a relay binary to test instead of building one,
// e.g. a release, or another revision to compare with.
//
// # Restoring the servers
//
// Every broker setting a test changes (memory watermark, max_message_size,
// the application stopped for a restart) is restored in t.Cleanup, failing
// or not, and TestMain puts the broker back in order before the tests if an
// earlier run was killed half-way.
package faults
