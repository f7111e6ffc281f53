// Package harness runs the outbox-relay binary and the servers around it
// for the demo (cmd/outbox-demo), the bench (cmd/outbox-bench) and the
// fault suite (internal/faults): one helper for each job, so that none of
// them grows a copy of its own.
//
// # The relay as a process
//
// A [Relay] names the binary ([Build] compiles it, [FindRelay] finds one
// built by `make build`) and the environment it runs with. [Relay.Start]
// starts `outbox-relay run` and returns a [Process]: its output is kept in
// an [Output] (thread-safe, with Count, Grep and FirstLineTime for tests)
// and copied, a whole line at a time after [Relay.OutputPrefix], to
// [Relay.Output] if set. Stop it
// with [Process.Stop] (SIGTERM, then SIGKILL after a timeout) or
// [Process.Kill]; every goroutine the package starts for a process ends
// when the process has exited and is joined by Stop, Kill and Wait.
// [Relay.Command] runs one-shot commands: migrate, dead retry, status -o
// json.
//
// The URLs reach the relay through its environment, never its command
// line, where ps would show their passwords.
//
// # Metrics
//
// [Scrape] reads a /metrics endpoint and parses it with
// github.com/prometheus/common/expfmt; [Metrics.Value] returns a series
// such as outbox_published_total or outbox_connection_up{kind="amqp"}.
// [Process.Metric] does both for a running relay.
//
// # Waiting
//
// [Poll], [Within], [WaitUntil] and [WaitFor] poll a condition until it
// holds or a deadline passes: never a sleep to synchronise. WaitFor fails
// a test through the small interface [TB]: the package does not import
// testing, which the programs built on it would otherwise carry.
//
// # The broker
//
// [DialAMQP] connects as the relay would from OUTBOX_AMQP_URL and
// OUTBOX_AMQP_PASSWORD_FILE, under a connection name, and never shows the
// password in an error. [Rabbitmqctl] runs the local node's rabbitmqctl;
// [StopBroker], [StartBroker], [BrokerConnections],
// [CloseBrokerConnectionsNamed] and the setting helpers are built on it.
package harness
