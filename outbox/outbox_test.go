package outbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/outbox"
)

func TestEnqueue(t *testing.T) {
	t.Parallel()
	for _, h := range handles() {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := context.Background()

			given := outbox.NewMessageID()
			delay := time.Now().Add(time.Hour).Truncate(time.Microsecond)
			msgs := []outbox.Message{
				{RoutingKey: "order.created", Payload: []byte("first")},
				{
					Exchange: "orders", RoutingKey: "order.paid", PartitionKey: "order-42", MessageID: given,
					ContentType: "application/json", Payload: []byte(`{"id":42}`), AvailableAt: delay,
					Headers: map[string]any{
						"x-retry": 3, "s": "text", "f": 1.5, "b": true, "none": nil, "max": int64(math.MaxInt64),
						"u": uint64(7), "typed": []string{"a"}, "nested": map[string]any{"list": []any{1, "two", nil}},
					},
				},
				{RoutingKey: "order.shipped", PartitionKey: "order-42", Headers: map[string]any{}}, // nil payload
			}
			ids, err := h.enqueue(ctx, t, b, b.w, msgs...)
			if err != nil {
				t.Fatalf("enqueue: %v", err)
			}
			if len(ids) != len(msgs) {
				t.Fatalf("got %d ids for %d messages", len(ids), len(msgs))
			}
			if ids[1] != given {
				t.Errorf("ids[1] = %v, want the given %v", ids[1], given)
			}
			if ids[0].IsZero() || ids[2].IsZero() || ids[0] == ids[2] {
				t.Errorf("generated ids %v and %v are zero or equal", ids[0], ids[2])
			}

			rows := readRows(t, b.env)
			if !h.committed {
				if len(rows) != 0 {
					t.Fatalf("rolled back, but the table holds %d rows", len(rows))
				}
				return
			}
			if len(rows) != len(msgs) {
				t.Fatalf("table holds %d rows, want %d", len(rows), len(msgs))
			}
			for i, r := range rows {
				if r.MessageID != ids[i].String() {
					t.Errorf("row %d: message_id %s, want %s", i, r.MessageID, ids[i])
				}
				if r.RoutingKey != msgs[i].RoutingKey || r.Exchange != msgs[i].Exchange {
					t.Errorf("row %d: exchange %q, routing key %q; want %q, %q", i, r.Exchange, r.RoutingKey, msgs[i].Exchange, msgs[i].RoutingKey)
				}
				if !bytes.Equal(r.Payload, msgs[i].Payload) || r.Payload == nil {
					t.Errorf("row %d: payload %q, want %q", i, r.Payload, msgs[i].Payload)
				}
			}

			r := rows[0]
			if r.PartitionKey != nil || r.ContentType != nil || r.Headers != nil {
				t.Errorf("row 0: partition key %v, content type %v, headers %v; want nulls", r.PartitionKey, r.ContentType, r.Headers)
			}
			if !r.AvailableAt.Equal(r.CreatedAt) {
				t.Errorf("row 0: available_at %v, want created_at %v", r.AvailableAt, r.CreatedAt)
			}

			r = rows[1]
			if r.PartitionKey == nil || *r.PartitionKey != "order-42" || r.ContentType == nil || *r.ContentType != "application/json" {
				t.Errorf("row 1: partition key %v, content type %v", r.PartitionKey, r.ContentType)
			}
			if !r.AvailableAt.Equal(delay) {
				t.Errorf("row 1: available_at %v, want %v", r.AvailableAt, delay)
			}
			want := decodeJSON(t, `{"x-retry": 3, "s": "text", "f": 1.5, "b": true, "none": null, "max": 9223372036854775807,
				"u": 7, "typed": ["a"], "nested": {"list": [1, "two", null]}}`)
			if r.Headers == nil {
				t.Fatal("row 1: headers are null")
			}
			if got := decodeJSON(t, *r.Headers); !reflect.DeepEqual(got, want) {
				t.Errorf("row 1: headers %s, want %v", *r.Headers, want)
			}

			if r := rows[2]; r.Headers == nil || *r.Headers != "{}" || len(r.Payload) != 0 {
				t.Errorf("row 2: headers %v, payload %q; want {} and empty", r.Headers, r.Payload)
			}
		})
	}
}

// TestEnqueueOrder checks that ids, and so the relay's order within a
// partition key, follow the order of a large batch, and that the returned
// message ids line up with it.
func TestEnqueueOrder(t *testing.T) {
	t.Parallel()
	for _, h := range handles() {
		if !h.committed {
			continue
		}
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			const n = 2000
			msgs := make([]outbox.Message, n)
			for i := range msgs {
				msgs[i] = outbox.Message{RoutingKey: "rk", PartitionKey: "k", Payload: []byte(strconv.Itoa(i))}
				if i%3 == 0 {
					msgs[i].MessageID = outbox.NewMessageID()
				}
			}
			ids, err := h.enqueue(context.Background(), t, b, b.w, msgs...)
			if err != nil {
				t.Fatalf("enqueue: %v", err)
			}
			rows := readRows(t, b.env)
			if len(rows) != n || len(ids) != n {
				t.Fatalf("%d rows, %d ids; want %d", len(rows), len(ids), n)
			}
			for i, r := range rows {
				if string(r.Payload) != strconv.Itoa(i) || r.MessageID != ids[i].String() {
					t.Fatalf("row %d (by id) holds message %s with id %s; want message %d with id %s", i, r.Payload, r.MessageID, i, ids[i])
				}
				if !msgs[i].MessageID.IsZero() && ids[i] != msgs[i].MessageID {
					t.Fatalf("ids[%d] = %s, want the given %s", i, ids[i], msgs[i].MessageID)
				}
			}
		})
	}
}

// TestEnqueueRefusedBatch checks that one bad message keeps the whole batch
// out, whatever the handle.
func TestEnqueueRefusedBatch(t *testing.T) {
	t.Parallel()
	for _, h := range handles() {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			msgs := []outbox.Message{
				{RoutingKey: "a", Payload: []byte("1")},
				{RoutingKey: "b", Payload: []byte("2")},
				{RoutingKey: "c", Headers: map[string]any{"x-retry": math.NaN()}},
			}
			_, err := h.enqueue(context.Background(), t, b, b.w, msgs...)
			const want = `outbox: message 2: header "x-retry": NaN cannot be carried`
			if err == nil || err.Error() != want {
				t.Fatalf("got error %v, want %q", err, want)
			}
			var me *outbox.MessageError
			if !errors.Is(err, outbox.ErrInvalidHeader) || !errors.As(err, &me) || me.Index != 2 {
				t.Errorf("error %v: want ErrInvalidHeader in a MessageError for index 2", err)
			}
			assertCount(t, b, 0)
		})
	}
}

// TestEnqueueDatabaseError checks that a failing statement is reported
// with its PostgreSQL error and writes nothing.
func TestEnqueueDatabaseError(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	missing := newWriter(t, pgx.Identifier{b.env.Name, "missing"}.Sanitize())

	_, err := missing.Enqueue(ctx, b.env.Pool, outbox.Message{RoutingKey: "rk"})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Fatalf("got %v, want undefined_table", err)
	}
	want := fmt.Sprintf(`outbox: enqueue into "%s"."missing": `, b.env.Name)
	if got := err.Error(); len(got) < len(want) || got[:len(want)] != want {
		t.Errorf("error %q does not start with %q", got, want)
	}
	if _, err := missing.EnqueueSQL(ctx, b.db, outbox.Message{RoutingKey: "rk"}); !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Errorf("EnqueueSQL: got %v, want undefined_table", err)
	}

	// A failure inside the caller's transaction rolls back with it.
	tx, err := b.env.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := b.w.Enqueue(ctx, tx, outbox.Message{RoutingKey: "ok"}); err != nil {
		t.Fatal(err)
	}
	if _, err := missing.Enqueue(ctx, tx, outbox.Message{RoutingKey: "rk"}); err == nil {
		t.Fatal("enqueue into a missing table succeeded")
	}
	if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Errorf("commit of an aborted transaction: got %v", err)
	}
	assertCount(t, b, 0)
}

func TestEnqueueNothing(t *testing.T) {
	t.Parallel()
	// No messages, no round trip: the nil handle is never used.
	if ids, err := outbox.Enqueue(context.Background(), nil); ids != nil || err != nil {
		t.Errorf("Enqueue() = %v, %v", ids, err)
	}
	if ids, err := outbox.EnqueueSQL(context.Background(), nil); ids != nil || err != nil {
		t.Errorf("EnqueueSQL() = %v, %v", ids, err)
	}
}
