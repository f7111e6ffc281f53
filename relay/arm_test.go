package relay

import (
	"context"
	"testing"

	"github.com/outbox-relay/outbox-relay/schema"
)

// Arm raises the flag and says whether a transaction that wrote to the table
// is still open: such a writer may have read the flag down and not notify.
// What holds a lock on the table without writing (a VACUUM) does not count.
func TestArmWaitsForOpenWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		open  string // run in a transaction left open while Arm runs
		armed bool
	}{
		{name: "no one", armed: true},
		{name: "a reader", open: "select count(*) from {{t}}", armed: true},
		{name: "a writer", open: "insert into {{t}} (routing_key, payload) values ('k', 'x')", armed: false},
		{name: "a vacuum's lock", open: "lock table {{t}} in share update exclusive mode", armed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupStore(t)
			if tc.open != "" {
				tx, err := b.env.Pool.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(ctx)
				if _, err := tx.Exec(ctx, b.env.SQL(tc.open)); err != nil {
					t.Fatal(err)
				}
			}
			armed, err := b.store.Arm(ctx)
			if err != nil || armed != tc.armed {
				t.Errorf("Arm = %t, %v; want %t", armed, err, tc.armed)
			}
			// Tried again, it says the same, looking the holders up.
			if armed, err := b.store.Arm(ctx); err != nil || armed != tc.armed {
				t.Errorf("Arm again = %t, %v; want %t", armed, err, tc.armed)
			}
			if waiting, err := schema.RelayWaiting(ctx, b.env.Pool, b.env.Table); err != nil || !waiting {
				t.Errorf("flag after Arm: %t, %v; want raised", waiting, err)
			}
		})
	}
}
