package schema_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// notifyLeeway is how long a notification that should not come is waited
// for.
const notifyLeeway = 300 * time.Millisecond

// A writer role with nothing but INSERT on the table (and SELECT on
// message_id, for the enqueue functions) can write events, and its inserts
// notify exactly while the wake-up flag is 1.
func TestWriterRoleNotifiesOnlyWhileRelayWaits(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	role := pgx.Identifier{e.Name + "_writer"}.Sanitize()
	for _, sql := range []string{
		"create role " + role + " nologin",
		"grant usage on schema " + pgx.Identifier{e.Name}.Sanitize() + " to " + role,
		// The enqueue functions return message_id, which takes SELECT on it.
		"grant insert, select (message_id) on " + e.Table.Ident() + " to " + role,
	} {
		if _, err := e.Pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	t.Cleanup(func() {
		for _, sql := range []string{"drop owned by " + role, "drop role " + role} {
			if _, err := e.Pool.Exec(context.Background(), sql); err != nil {
				t.Errorf("%s: %v", sql, err)
			}
		}
	})

	listener := testenv.Conn(t)
	if _, err := listener.Exec(ctx, "listen "+pgx.Identifier{e.Table.Channel()}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	asWriter := func(sql string) {
		t.Helper()
		err := pgx.BeginFunc(ctx, e.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "set local role "+role); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, sql)
			return err
		})
		if err != nil {
			t.Fatalf("as writer: %s: %v", sql, err)
		}
	}
	notified := func(within time.Duration) bool {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		_, err := listener.WaitForNotification(wctx)
		if err != nil && !errors.Is(err, context.DeadlineExceeded) && wctx.Err() == nil {
			t.Fatal(err)
		}
		return err == nil
	}
	setFlag := func(v int) {
		t.Helper()
		if _, err := e.Pool.Exec(ctx, "select setval($1::regclass, $2)", e.Table.Derived("relay_waiting"), v); err != nil {
			t.Fatal(err)
		}
	}

	insert := "insert into " + e.Table.Ident() + " (routing_key, payload) values ('k', 'x')"
	enqueue := "select " + e.Table.Derived("enqueue") + "('', 'k', 'x'::text)"
	for _, sql := range []string{insert, enqueue} {
		asWriter(sql)
		if notified(notifyLeeway) {
			t.Errorf("%s notified with the flag never set", sql)
		}
	}
	setFlag(1)
	if w, err := schema.RelayWaiting(ctx, e.Pool, e.Table); err != nil || !w {
		t.Fatalf("RelayWaiting = %v, %v after setting the flag", w, err)
	}
	for _, sql := range []string{insert, enqueue} {
		asWriter(sql)
		if !notified(5 * time.Second) {
			t.Errorf("%s did not notify with the flag at 1", sql)
		}
	}
	setFlag(0)
	asWriter(insert)
	if notified(notifyLeeway) {
		t.Errorf("insert notified with the flag at 0")
	}
	var n int
	if err := e.Pool.QueryRow(ctx, "select count(*) from "+e.Table.Ident()).Scan(&n); err != nil || n != 5 {
		t.Errorf("%d rows, %v; want 5", n, err)
	}
}
