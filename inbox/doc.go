// Package inbox makes a consumer's work happen once per message, although
// RabbitMQ delivers at least once: the consumers' side of the
// transactional outbox.
//
// In the consumer's own database, Migrate creates an inbox table (default
// "inbox"; columns consumer, message_id, received_at; primary key
// (consumer, message_id)) and a function named after it,
// inbox_claim(consumer text, message_id uuid) returns boolean. A consumer
// calls it in the transaction that does the work, before the work: true
// the first time this consumer sees the id, false for a duplicate. A
// rollback undoes the claim, so a redelivery is processed. Any language
// can call the function; MigrateSQL prints the SQL for teams that apply
// migrations with their own tools. docs/inbox.md has Python and Go
// examples.
//
// # Go
//
// Claim and ClaimSQL call the function in a pgx.Tx or a *sql.Tx. A
// Consumer goes further and owns the whole delivery: Consumer.Handle
// begins a transaction, claims the delivery's message_id, runs the handler
// if this is the first claim, commits, and only then acks. A duplicate is
// acked without running the handler; a handler error rolls back and the
// delivery is nacked for redelivery; a delivery without a UUID message_id
// is rejected without requeue (ErrMessageID). A handler may enqueue outbox
// rows in its transaction: consuming and producing then commit together,
// and a chain of services is effectively once end to end.
//
// # Concurrency and isolation
//
// Two transactions claiming one id for one consumer at once: under READ
// COMMITTED (PostgreSQL's default) the second waits for the first, then
// gets false if the first committed and true if it rolled back. Under
// REPEATABLE READ or SERIALIZABLE the second fails with SQLSTATE 40001;
// Consumer retries the transaction (Config.Retries), and code of other
// languages must retry the whole transaction too.
//
// # Poison messages
//
// A message whose handler keeps failing would be redelivered forever.
// Consumer counts each message_id's handler failures in memory (bounded,
// outside the transactions that roll back) and rejects the delivery
// without requeue after Config.MaxFailures, so that the queue's
// dead-letter exchange receives it. The count is per process and lost on a
// restart; a quorum queue declared with x-delivery-limit and a
// dead-letter exchange bounds redeliveries on the broker instead, for
// every consumer and across restarts.
//
// # Pruning
//
// Claims must be kept longer than any redelivery can take; Prune deletes
// older ones in bounded batches, each its own transaction.
//
// # Metrics
//
// NewMetrics registers inbox_claims_total, inbox_duplicates_total,
// inbox_handler_failures_total, inbox_dead_lettered_total and
// inbox_pruned_rows_total on a registerer the caller passes.
package inbox
