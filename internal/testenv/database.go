package testenv

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// createDatabase creates database name on the test server, drops it (with
// whatever sessions are left) in t.Cleanup, and returns its URL.
func createDatabase(t testing.TB, name string) string {
	t.Helper()
	admin := Conn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := admin.Exec(ctx, "create database "+ident); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, DatabaseURL())
		if err != nil {
			t.Errorf("drop test database: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "drop database if exists "+ident+" with (force)"); err != nil {
			t.Errorf("drop test database: %v", err)
		}
	})
	return replaceDatabase(DatabaseURL(), name)
}

// replaceDatabase returns the connection string u naming database db
// instead: a URL gets a new path, a key=value DSN a later dbname (the last
// one wins).
func replaceDatabase(u, db string) string {
	if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
		if p, err := url.Parse(u); err == nil {
			p.Path = "/" + db
			return p.String()
		}
	}
	return u + " dbname=" + db
}
