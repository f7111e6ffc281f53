package inbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

// ErrMessageID is returned (wrapped) for a message without a message_id, or
// with one that is not a UUID: it cannot be de-duplicated, so it is never
// claimed, and Consumer.Handle rejects it without requeueing.
var ErrMessageID = errors.New("message_id is missing or not a UUID")

// Querier is what Claim needs from a pgx handle: pgx.Tx satisfies it. Pass
// the transaction that does the work, so that the claim commits or rolls
// back with it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SQLQuerier is what ClaimSQL needs from a database/sql handle: *sql.Tx
// satisfies it.
type SQLQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Inbox claims message ids in one inbox table. Create it once with New; it
// holds no connection and is safe for concurrent use.
type Inbox struct {
	table schema.Table
	claim string // the statement calling the table's claim function
}

// New returns an Inbox on table t (a zero Table means DefaultTable), which
// Migrate must have created.
func New(t schema.Table) *Inbox {
	if t.Name == "" {
		t = DefaultTable
	}
	return &Inbox{table: t, claim: "select " + namesOf(t).Claim + "($1, $2::uuid)"}
}

// defaultInbox serves the package-level functions.
var defaultInbox = New(DefaultTable)

// Table returns the inbox's table.
func (ib *Inbox) Table() schema.Table { return ib.table }

// Claim records, in tx, that consumer received messageID, and reports
// whether this is the first time: true means do the work in tx and commit;
// false means a duplicate whose work is done already (or being done by a
// transaction that commits first). A rollback of tx undoes the claim.
//
// consumer names the consuming service: each consumer name sees each
// message once; replicas of one service share a name. messageID is the
// AMQP message-id, a UUID; anything else is ErrMessageID, and tx is left
// untouched. Under REPEATABLE READ or SERIALIZABLE, a concurrent claim of the
// same id fails with SQLSTATE 40001: retry the whole transaction
// (Consumer.Handle does).
func (ib *Inbox) Claim(ctx context.Context, tx Querier, consumer, messageID string) (bool, error) {
	id, err := parseID(messageID)
	if err != nil {
		return false, err
	}
	var first bool
	if err := tx.QueryRow(ctx, ib.claim, consumer, id).Scan(&first); err != nil {
		return false, fmt.Errorf("inbox: claim %s in %s: %w", id, ib.table, err)
	}
	return first, nil
}

// ClaimSQL is Claim for database/sql transactions (*sql.Tx).
func (ib *Inbox) ClaimSQL(ctx context.Context, tx SQLQuerier, consumer, messageID string) (bool, error) {
	id, err := parseID(messageID)
	if err != nil {
		return false, err
	}
	var first bool
	if err := tx.QueryRowContext(ctx, ib.claim, consumer, id).Scan(&first); err != nil {
		return false, fmt.Errorf("inbox: claim %s in %s: %w", id, ib.table, err)
	}
	return first, nil
}

// Claim is Inbox.Claim on DefaultTable.
func Claim(ctx context.Context, tx Querier, consumer, messageID string) (bool, error) {
	return defaultInbox.Claim(ctx, tx, consumer, messageID)
}

// ClaimSQL is Inbox.ClaimSQL on DefaultTable.
func ClaimSQL(ctx context.Context, tx SQLQuerier, consumer, messageID string) (bool, error) {
	return defaultInbox.ClaimSQL(ctx, tx, consumer, messageID)
}

// parseID checks messageID in Go, so that a bad one neither costs a round
// trip nor aborts the caller's transaction, and returns it canonical.
func parseID(messageID string) (string, error) {
	if messageID == "" {
		return "", fmt.Errorf("inbox: %w: the message has no message_id", ErrMessageID)
	}
	id, err := outbox.ParseMessageID(messageID)
	if err != nil {
		return "", fmt.Errorf("inbox: %w: %w", ErrMessageID, err)
	}
	return id.String(), nil
}
