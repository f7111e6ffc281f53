package testenv

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// PgBouncerOptions is what a test chooses about its PgBouncer. Everything
// else keeps PgBouncer's built-in defaults; in particular there is no
// ignore_startup_parameters, so a client that sends a startup parameter
// PgBouncer does not track is refused, as in a stock deployment.
type PgBouncerOptions struct {
	// PoolMode is "session", "transaction" or "statement". Empty keeps
	// PgBouncer's default, session.
	PoolMode string
	// PoolSize is default_pool_size, the number of server connections per
	// user and database. 0 keeps PgBouncer's default, 20.
	PoolSize int
}

// pgBouncerMaxClients is max_client_conn: PgBouncer's default (100) is less
// than a few parallel pools may open.
const pgBouncerMaxClients = 200

// PgBouncer is a PgBouncer process in front of the test database, owned by
// the test that started it and stopped in t.Cleanup.
type PgBouncer struct {
	// URL reaches the database of DatabaseURL through PgBouncer, as the same
	// user.
	URL string
	// Output collects PgBouncer's log (it logs to stderr when not
	// daemonized). StartPgBouncer's cleanup prints it if the test failed.
	Output *Buffer

	cmd      *exec.Cmd
	exited   chan struct{} // closed once cmd.Wait returns
	stopOnce sync.Once
}

// StartPgBouncer starts PgBouncer on a free loopback port, routing the
// database of DatabaseURL to the PostgreSQL server there, and waits until it
// listens. Clients log in as the DatabaseURL user without a password
// (auth_type trust); PgBouncer logs in to PostgreSQL with DatabaseURL's
// password, if any. It is stopped, and its files removed, in t.Cleanup.
func StartPgBouncer(t testing.TB, o PgBouncerOptions) *PgBouncer {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/pgbouncer")
	}
	if err != nil {
		t.Fatalf("pgbouncer is not installed: %v\nhint: run `bash .ci/services` (installs Debian's pgbouncer)", err)
	}
	db, err := pgconn.ParseConfig(DatabaseURL())
	if err != nil {
		t.Fatalf("parse OUTBOX_TEST_DATABASE_URL: %v", err)
	}
	for _, v := range []string{db.Host, db.Database, db.User, db.Password} {
		if strings.ContainsAny(v, " '\"\\;=\n") {
			t.Fatalf("OUTBOX_TEST_DATABASE_URL has a host, database, user or password that PgBouncer's config would need quoted")
		}
	}

	// PgBouncer refuses to run as root ("PgBouncer should not run as root").
	dir, cred := serverDir(t, "testenv-pgbouncer-", "pgbouncer")

	users := filepath.Join(dir, "users.txt")
	// auth_type trust still looks the user up in auth_file ("trust"
	// authentication failed otherwise); the password is the one PgBouncer
	// gives PostgreSQL if asked.
	writeOwned(t, users, fmt.Sprintf("%q %q\n", db.User, db.Password), cred)

	// A race for the port makes PgBouncer exit ("nowhere to listen on"):
	// try again on another one.
	for attempt := 1; ; attempt++ {
		addr := FreeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		ini := filepath.Join(dir, "pgbouncer.ini")
		writeOwned(t, ini, pgBouncerINI(o, db, port, users), cred)

		b := &PgBouncer{Output: &Buffer{}, exited: make(chan struct{})}
		b.cmd = exec.Command(bin, ini)
		b.cmd.Stdout, b.cmd.Stderr = b.Output, b.Output
		if cred != nil {
			b.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		if err := b.cmd.Start(); err != nil {
			t.Fatalf("start pgbouncer: %v", err)
		}
		go func() {
			_ = b.cmd.Wait()
			close(b.exited)
		}()
		t.Cleanup(func() {
			b.Stop()
			if t.Failed() {
				t.Logf("pgbouncer on %s logged:\n%s", addr, b.Log())
			}
		})

		// PgBouncer logs "process up" once it listens. Dialling the port
		// instead could reach whichever process won a race for it; there is
		// no other signal, so this matches the log text as a last resort.
		WaitFor(t, 10*time.Second, "pgbouncer to start", func() bool {
			return b.hasExited() || strings.Contains(b.Log(), "process up")
		})
		if !b.hasExited() {
			u := url.URL{Scheme: "postgres", User: url.User(db.User), Host: addr, Path: "/" + db.Database}
			b.URL = u.String()
			return b
		}
		if attempt == 3 || !strings.Contains(b.Log(), "Address already in use") {
			t.Fatalf("pgbouncer exited on start (%v); its log follows", b.cmd.ProcessState)
		}
	}
}

// pgBouncerINI sets only what a test must choose: where to listen, which
// database to route, how clients log in, and the pool.
func pgBouncerINI(o PgBouncerOptions, db *pgconn.Config, port, authFile string) string {
	var s strings.Builder
	fmt.Fprintf(&s, "[databases]\n%s = host=%s port=%d dbname=%s\n\n", db.Database, db.Host, db.Port, db.Database)
	fmt.Fprintf(&s, "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = %s\n", port)
	// No Unix socket: it would go to /tmp, shared by every PgBouncer, and
	// while it works a failed TCP bind is only a warning, hiding a port race.
	s.WriteString("unix_socket_dir =\n")
	fmt.Fprintf(&s, "auth_type = trust\nauth_file = %s\n", authFile)
	fmt.Fprintf(&s, "max_client_conn = %d\n", pgBouncerMaxClients)
	if o.PoolMode != "" {
		fmt.Fprintf(&s, "pool_mode = %s\n", o.PoolMode)
	}
	if o.PoolSize != 0 {
		fmt.Fprintf(&s, "default_pool_size = %d\n", o.PoolSize)
	}
	return s.String()
}

func (b *PgBouncer) hasExited() bool {
	select {
	case <-b.exited:
		return true
	default:
		return false
	}
}

// Log returns what PgBouncer has logged so far.
func (b *PgBouncer) Log() string { return b.Output.String() }

// Stop shuts PgBouncer down, dropping its client and server connections, and
// waits for it to exit. It may be called more than once; t.Cleanup calls it.
func (b *PgBouncer) Stop() {
	b.stopOnce.Do(func() {
		// SIGTERM is an immediate shutdown in PgBouncer 1.18 (SIGINT would
		// wait for clients to leave).
		if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			_ = b.cmd.Process.Kill()
		}
		select {
		case <-b.exited:
		case <-time.After(10 * time.Second):
			_ = b.cmd.Process.Kill()
			<-b.exited
		}
	})
}
