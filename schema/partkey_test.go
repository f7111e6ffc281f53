package schema_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// incompressible returns n bytes of random hex digits: text that
// PostgreSQL's compression cannot shrink by the quarter it asks for, so it
// takes its full size in an index entry.
func incompressible(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b) // never returns an error
	return hex.EncodeToString(b)[:n]
}

// A row that fails backs off: the relay's UPDATE (attempts+1, available_at
// later) moves it into partition_idx. Every key the check lets through fits
// there, whatever its bytes; a key that would not is refused at insert,
// naming the check, rather than failing the relay's UPDATE of the row, and
// with it the settle of its whole batch.
func TestPartitionKeyFitsItsIndex(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	backOff := "update " + e.Table.Ident() + " set attempts = attempts + 1, available_at = now() + interval '1 minute' where id = $1"

	id, err := insertRow(ctx, e, "partition_key", incompressible(schema.MaxPartitionKey))
	if err != nil {
		t.Fatalf("insert an incompressible key of %d bytes: %v", schema.MaxPartitionKey, err)
	}
	if _, err := e.Pool.Exec(ctx, backOff, id); err != nil {
		t.Errorf("back off a row with an incompressible key of %d bytes: %v", schema.MaxPartitionKey, err)
	}
	for _, n := range []int{schema.MaxPartitionKey + 1, 3000} {
		_, err := insertRow(ctx, e, "partition_key", incompressible(n))
		wantViolation(t, fmt.Sprintf("insert an incompressible key of %d bytes", n), err, e.Table.Name+"_partkey_size")
		// Delayed by its writer, it would enter the index at once: the
		// check still speaks first.
		_, err = e.Pool.Exec(ctx, "insert into "+e.Table.Ident()+" (routing_key, partition_key, payload, available_at) values ('k', $1, 'x', now() + interval '1 minute')",
			incompressible(n))
		wantViolation(t, fmt.Sprintf("insert a delayed row with an incompressible key of %d bytes", n), err, e.Table.Name+"_partkey_size")
	}
}

// Without the check, a stall: the UPDATE that backs
// off a failed row with a long incompressible key fails on the index.
func TestPartitionKeyTooLongForIndexWithoutCheck(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	if _, err := e.Pool.Exec(ctx, "alter table "+e.Table.Ident()+" drop constraint "+e.Table.Local("partkey_size")); err != nil {
		t.Fatal(err)
	}
	id, err := insertRow(ctx, e, "partition_key", incompressible(3000))
	if err != nil {
		t.Fatalf("insert: %v", err)
	}
	_, err = e.Pool.Exec(ctx, "update "+e.Table.Ident()+" set attempts = attempts + 1, available_at = now() + interval '1 minute' where id = $1", id)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "54000" { // program_limit_exceeded: index row size exceeds btree maximum
		t.Errorf("back off a row with an incompressible key of 3000 bytes: %v; want the index to refuse it", err)
	}
}
