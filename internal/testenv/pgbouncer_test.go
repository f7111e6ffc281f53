package testenv

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// connectVia opens a connection through b, closed in t.Cleanup. It uses the
// simple protocol: PgBouncer 1.18 does not track prepared statements, so in
// transaction mode pgx's statement cache fails with "prepared statement
// already exists" once two clients share a server connection.
func connectVia(t *testing.T, b *PgBouncer) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect through pgbouncer: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func execSQL(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

const backendPID = "select pg_backend_pid()::text"

func TestPgBouncerSessionMode(t *testing.T) {
	t.Parallel()
	b := StartPgBouncer(t, PgBouncerOptions{PoolMode: "session"})
	c1, c2 := connectVia(t, b), connectVia(t, b)

	if p1, p2 := queryString(t, c1, backendPID), queryString(t, c2, backendPID); p1 == p2 {
		t.Errorf("two session-mode clients share backend %s", p1)
	}
	execSQL(t, c1, "set statement_timeout = '4321ms'")
	execSQL(t, c1, "begin")
	execSQL(t, c1, "commit")
	if got := queryString(t, c1, "show statement_timeout"); got != "4321ms" {
		t.Errorf("statement_timeout after a later transaction = %q, want the session's 4321ms", got)
	}
}

func TestPgBouncerSessionModeResetsServer(t *testing.T) {
	t.Parallel()
	b := StartPgBouncer(t, PgBouncerOptions{PoolMode: "session", PoolSize: 1})
	c1 := connectVia(t, b)
	pid := queryString(t, c1, backendPID)
	execSQL(t, c1, "set statement_timeout = '4321ms'")
	if err := c1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	// The default server_reset_query (DISCARD ALL) runs before the one
	// server connection goes to the next client.
	c2 := connectVia(t, b)
	if got := queryString(t, c2, backendPID); got != pid {
		t.Fatalf("second client got backend %s, want the pool's only one, %s", got, pid)
	}
	if got := queryString(t, c2, "show statement_timeout"); got != "0" {
		t.Errorf("statement_timeout = %q for the next client, want it reset to 0", got)
	}
}

func TestPgBouncerTransactionMode(t *testing.T) {
	t.Parallel()
	b := StartPgBouncer(t, PgBouncerOptions{PoolMode: "transaction", PoolSize: 1})
	c1, c2 := connectVia(t, b), connectVia(t, b)

	p1, p2 := queryString(t, c1, backendPID), queryString(t, c2, backendPID)
	if p1 != p2 {
		t.Errorf("clients got backends %s and %s, want one shared backend with pool size 1", p1, p2)
	}
	// No reset between transactions: a session SET leaks to other clients.
	execSQL(t, c1, "set statement_timeout = '4321ms'")
	if got := queryString(t, c2, "show statement_timeout"); got != "4321ms" {
		t.Errorf("other client's statement_timeout = %q, want the leaked 4321ms", got)
	}
}

// TestPgBouncerRefusesStartupParameters documents why the relay must not put
// server settings in its startup packet: without ignore_startup_parameters,
// PgBouncer refuses every parameter it does not track itself.
func TestPgBouncerRefusesStartupParameters(t *testing.T) {
	t.Parallel()
	b := StartPgBouncer(t, PgBouncerOptions{PoolMode: "transaction"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	tracked, err := pgx.ParseConfig(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	tracked.RuntimeParams["application_name"] = t.Name()
	conn, err := pgx.ConnectConfig(ctx, tracked)
	if err != nil {
		t.Fatalf("connect with application_name, which PgBouncer tracks: %v", err)
	}
	_ = conn.Close(ctx)

	untracked, err := pgx.ParseConfig(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	untracked.RuntimeParams["tcp_keepalives_idle"] = "60"
	conn, err = pgx.ConnectConfig(ctx, untracked)
	if err == nil {
		_ = conn.Close(ctx)
		t.Fatal("connect with tcp_keepalives_idle succeeded, want it refused")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || !strings.Contains(pgErr.Message, "unsupported startup parameter") {
		t.Fatalf("connect with tcp_keepalives_idle: %v, want a server error about an unsupported startup parameter", err)
	}
	// PgBouncer logs after it has sent the error: wait for the line.
	WaitFor(t, 10*time.Second, "pgbouncer to log the refused parameter", func() bool {
		return strings.Contains(b.Log(), "unsupported startup parameter: tcp_keepalives_idle")
	})
}

func TestPgBouncerStop(t *testing.T) {
	t.Parallel()
	b := StartPgBouncer(t, PgBouncerOptions{})
	conn := connectVia(t, b)
	b.Stop()
	b.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "select 1"); err == nil {
		t.Error("query through a stopped pgbouncer succeeded")
	}
	if !strings.Contains(b.Log(), "got SIGTERM") {
		t.Errorf("pgbouncer log does not show the SIGTERM:\n%s", b.Log())
	}
}
