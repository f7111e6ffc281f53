package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/schema"
)

// MigrateTo creates e's table as migrations 1 to version left it, recorded
// as applied, as an older `outbox-relay migrate` did. Create e
// WithoutMigrate. Upgrade tests then run schema.Migrate on it.
func (e *Env) MigrateTo(t testing.TB, version int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Pool.Exec(ctx, `create table `+e.Table.Derived("schema_migrations")+
		` (version int primary key, name text not null, applied_at timestamptz not null default now())`); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Version > version {
			break
		}
		sql, err := m.SQL(e.Table)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Pool.Exec(ctx, sql); err != nil {
			t.Fatalf("migration %d: %v", m.Version, err)
		}
		if _, err := e.Pool.Exec(ctx, "insert into "+e.Table.Derived("schema_migrations")+" (version, name) values ($1, $2)", m.Version, m.Name); err != nil {
			t.Fatal(err)
		}
	}
}
