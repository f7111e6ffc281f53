package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/schema"
)

// PGPairDatabase is the database StartPrimaryStandby creates for the test.
const PGPairDatabase = "test"

// pgPairTimeout bounds each step of a PGPair: a server start, a base
// backup, a promotion, a wait for replay.
const pgPairTimeout = 60 * time.Second

// PGPair is a throwaway PostgreSQL primary and a streaming standby of it,
// two server processes of the test's own, for tests that fail over. It is
// not the shared test server: a test may kill and promote at will.
//
// Replication is synchronous (synchronous_standby_names = '*' on the
// primary): a commit the primary acknowledged has reached the standby, so
// a failover loses no committed transaction, as in a deployment that
// promises so. Sessions with synchronous_commit off, such as the relay's,
// do not wait: what they wrote just before the primary died may be gone
// from the promoted standby.
type PGPair struct {
	// PrimaryURL and StandbyURL reach PGPairDatabase on each server, as
	// user postgres without a password. They name servers, not roles:
	// after Promote, StandbyURL reaches the new primary.
	PrimaryURL, StandbyURL string
	// MultiHostURL names both servers, the primary first, with
	// target_session_attrs=read-write: it reaches whichever accepts writes,
	// the primary, or the standby once promoted.
	MultiHostURL string

	bin              string // directory holding initdb, pg_ctl, pg_basebackup
	dir              string // data directories, logs and sockets
	cred             *syscall.Credential
	primary, standby *pgServer
}

// pgServer is one server of a PGPair.
type pgServer struct {
	name    string // "primary" or "standby"
	data    string
	log     string
	port    int
	running bool
}

// StartPrimaryStandby initdbs a primary in a temporary directory, starts it
// on a free loopback port with trust authentication, creates
// PGPairDatabase, clones it with pg_basebackup -R into a standby on another
// port, starts the standby and makes replication synchronous. Both servers
// are stopped (immediately) and their files removed in t.Cleanup. The
// server binaries come from OUTBOX_TEST_PG_BINDIR, PATH, or the newest
// /usr/lib/postgresql/*/bin; as root, the servers run as user postgres,
// since PostgreSQL refuses root.
func StartPrimaryStandby(t testing.TB) *PGPair {
	t.Helper()
	p := startPrimary(t, "wal_level = replica\nmax_wal_senders = 5\nwal_keep_size = '256MB'\nhot_standby = on\n")
	p.standby = &pgServer{name: "standby", data: filepath.Join(p.dir, "standby"), log: filepath.Join(p.dir, "standby.log")}

	p.run(t, "pg_basebackup", "-D", p.standby.data, "-R", "-X", "stream", "-c", "fast", "--no-sync",
		"-h", "127.0.0.1", "-p", strconv.Itoa(p.primary.port), "-U", "postgres")
	p.start(t, p.standby)
	p.StandbyURL = pgURL(p.standby.port, PGPairDatabase)
	p.MultiHostURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?target_session_attrs=read-write",
		p.primary.port, p.standby.port, PGPairDatabase)

	// Synchronous only once the standby streams: before, every commit
	// would wait for it. ALTER SYSTEM writes the primary's own
	// postgresql.auto.conf, which the standby, already cloned, lacks; once
	// promoted, it does not wait for a standby it does not have.
	p.poll(t, p.PrimaryURL, "the standby to stream from the primary",
		"select count(*) > 0 from pg_stat_replication where state = 'streaming'")
	p.query(t, p.PrimaryURL, "alter system set synchronous_standby_names = '*'", nil)
	p.query(t, p.PrimaryURL, "select pg_reload_conf()", nil)
	p.poll(t, p.PrimaryURL, "replication to become synchronous",
		"select count(*) > 0 from pg_stat_replication where sync_state = 'sync'")
	return p
}

// StartPostgres initdbs and starts one throwaway server, as
// StartPrimaryStandby starts its primary, with conf added to its
// postgresql.conf (e.g. "max_prepared_transactions = 10\n"), for a test
// that needs settings the shared server lacks. It has no standby:
// StandbyURL is empty and MultiHostURL is PrimaryURL.
func StartPostgres(t testing.TB, conf string) *PGPair {
	t.Helper()
	p := startPrimary(t, conf)
	p.MultiHostURL = p.PrimaryURL
	return p
}

// startPrimary initdbs the primary with conf added to its configuration,
// starts it and creates PGPairDatabase.
func startPrimary(t testing.TB, conf string) *PGPair {
	t.Helper()
	p := &PGPair{bin: pgBinDir(t)}
	p.dir, p.cred = serverDir(t, "testenv-pg-", "PostgreSQL")
	p.primary = &pgServer{name: "primary", data: filepath.Join(p.dir, "primary"), log: filepath.Join(p.dir, "primary.log")}
	t.Cleanup(func() { p.cleanup(t) })

	p.run(t, "initdb", "-D", p.primary.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	f, err := os.OpenFile(filepath.Join(p.primary.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		// The port is given at each start (-p): a standby copies this file.
		// fsync is off because nothing here survives the test; a server
		// killed by stop -m immediate still leaves its writes in the OS.
		_, err = fmt.Fprintf(f, "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nfsync = off\n%s", p.dir, conf)
		err = errors.Join(err, f.Close())
	}
	if err != nil {
		t.Fatalf("configure primary: %v", err)
	}
	p.start(t, p.primary)
	p.PrimaryURL = pgURL(p.primary.port, PGPairDatabase)
	p.query(t, pgURL(p.primary.port, "postgres"), "create database "+pgx.Identifier{PGPairDatabase}.Sanitize(), nil)
	return p
}

// Env is New on the pair: the test's schema and migrated outbox table are
// created on the primary, and Pool and URL use MultiHostURL, so that they
// reach the standby once it is promoted. The schema is not dropped: the
// pair's cleanup removes everything.
func (p *PGPair) Env(t testing.TB) *Env {
	t.Helper()
	e := &Env{Name: UniqueName(t), URL: p.MultiHostURL}
	e.Table = schema.Table{Schema: e.Name, Name: schema.TableDefault}
	e.Pool = PoolAt(t, e.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.Pool.Exec(ctx, "create schema "+pgx.Identifier{e.Name}.Sanitize()); err != nil {
		t.Fatalf("create test schema: %v", err)
	}
	if _, err := schema.Migrate(ctx, ConnAt(t, e.URL), e.Table); err != nil {
		t.Fatalf("migrate test table: %v", err)
	}
	e.AMQP = AMQPConn(t, e.Name)
	return e
}

// WaitReplayed waits until the standby has replayed the primary's WAL up
// to the primary's current position: whatever was committed before the
// call is visible on the standby.
func (p *PGPair) WaitReplayed(t testing.TB) {
	t.Helper()
	var lsn string
	p.query(t, p.PrimaryURL, "select pg_current_wal_lsn()::text", &lsn)
	p.poll(t, p.StandbyURL, "the standby to replay up to "+lsn,
		"select coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", lsn)
}

// KillPrimary stops the primary with pg_ctl stop -m immediate: its
// processes quit at once, without a checkpoint, and its clients' sockets
// are closed, as when the server crashes. (A machine that vanishes leaves
// them open instead; this does not imitate that.)
func (p *PGPair) KillPrimary(t testing.TB) {
	t.Helper()
	p.run(t, "pg_ctl", "stop", "-D", p.primary.data, "-m", "immediate", "-w", "-t", strconv.Itoa(int(pgPairTimeout.Seconds())))
	p.primary.running = false
}

// Promote promotes the standby (pg_ctl promote) and waits until it accepts
// writes (pg_is_in_recovery() is false).
func (p *PGPair) Promote(t testing.TB) {
	t.Helper()
	p.run(t, "pg_ctl", "promote", "-D", p.standby.data, "-w", "-t", strconv.Itoa(int(pgPairTimeout.Seconds())))
	p.poll(t, p.StandbyURL, "the promoted standby to leave recovery", "select not pg_is_in_recovery()")
}

// StandbyPort is the standby's TCP port on 127.0.0.1 (the new primary's,
// once promoted).
func (p *PGPair) StandbyPort() int { return p.standby.port }

// start starts s on a free port and waits until it accepts connections
// (pg_ctl -w; a standby: read-only ones). Another process may take the
// port between FreeAddr and the server's bind: then it tries another one.
func (p *PGPair) start(t testing.TB, s *pgServer) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		_, port, _ := net.SplitHostPort(FreeAddr(t))
		s.port, _ = strconv.Atoi(port)
		out, err := p.output("pg_ctl", "start", "-D", s.data, "-l", s.log, "-w", "-t", strconv.Itoa(int(pgPairTimeout.Seconds())),
			"-o", "-p "+port)
		if err == nil {
			s.running = true
			return
		}
		logged, _ := os.ReadFile(s.log)
		if attempt == 3 || !strings.Contains(string(logged), "Address already in use") {
			t.Fatalf("start %s: %v\n%s\n%s log:\n%s", s.name, err, out, s.name, logged)
		}
	}
}

// cleanup stops both servers immediately, shows their logs if the test
// failed and removes their files.
func (p *PGPair) cleanup(t testing.TB) {
	for _, s := range []*pgServer{p.primary, p.standby} {
		if s == nil {
			continue
		}
		if s.running {
			if out, err := p.output("pg_ctl", "stop", "-D", s.data, "-m", "immediate", "-w"); err != nil {
				t.Errorf("stop the %s: %v\n%s", s.name, err, out)
			}
			s.running = false
		}
		if t.Failed() {
			if b, err := os.ReadFile(s.log); err == nil {
				t.Logf("%s on port %d logged:\n%s", s.name, s.port, b)
			}
		}
	}
	if err := os.RemoveAll(p.dir); err != nil {
		t.Errorf("remove the pair's files: %v", err)
	}
}

// run runs a server program and fails the test if it fails.
func (p *PGPair) run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := p.output(name, args...); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// output runs a server program from p.bin as the servers' owner, in the
// pair's directory (the postgres user may not enter the test's), and
// returns what it printed.
func (p *PGPair) output(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), pgPairTimeout+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, name), args...)
	cmd.Dir = p.dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "HOME=" + p.dir}
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	// pg_ctl start sends the server's output to its log (-l), so the
	// server does not hold these pipes open after pg_ctl exits.
	return cmd.CombinedOutput()
}

// query runs sql on a connection of its own to dsn and scans its one row
// into dest (nil: ignore it; a statement without rows scans nothing).
func (p *PGPair) query(t testing.TB, dsn, sql string, dest any, args ...any) {
	t.Helper()
	if err := queryOnce(dsn, sql, dest, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// poll runs the boolean query sql on dsn every 10ms until it returns true,
// failing the test after pgPairTimeout. Errors count as false: the server
// may be starting or promoting.
func (p *PGPair) poll(t testing.TB, dsn, what, sql string, args ...any) {
	t.Helper()
	var lastErr error
	deadline := time.Now().Add(pgPairTimeout)
	for {
		var ok bool
		lastErr = queryOnce(dsn, sql, &ok, args...)
		if lastErr == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", pgPairTimeout, what, lastErr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func queryOnce(dsn, sql string, dest any, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = conn.QueryRow(ctx, sql, args...).Scan(dest)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	return err
}

// pgURL is the URL of database db on the loopback port, as user postgres.
func pgURL(port int, db string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Path: "/" + db}
	return u.String()
}

// pgBinDir finds the directory of the PostgreSQL server programs.
func pgBinDir(t testing.TB) string {
	t.Helper()
	need := []string{"initdb", "pg_ctl", "pg_basebackup"}
	has := func(dir string) bool {
		for _, n := range need {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv("OUTBOX_TEST_PG_BINDIR"); dir != "" {
		if !has(dir) {
			t.Fatalf("OUTBOX_TEST_PG_BINDIR=%s lacks one of %v", dir, need)
		}
		return dir
	}
	if path, err := exec.LookPath("pg_ctl"); err == nil && has(filepath.Dir(path)) {
		return filepath.Dir(path)
	}
	// Debian and Ubuntu keep them off PATH, one directory per major version.
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	dirs = slices.DeleteFunc(dirs, func(d string) bool { return !has(d) })
	if len(dirs) == 0 {
		t.Fatalf("PostgreSQL server programs (%s) not found in OUTBOX_TEST_PG_BINDIR, PATH or /usr/lib/postgresql/*/bin\n"+
			"hint: install them (Debian: `apt-get install postgresql`), or set OUTBOX_TEST_PG_BINDIR", strings.Join(need, ", "))
	}
	version := func(d string) int {
		n, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		return n
	}
	slices.SortFunc(dirs, func(a, b string) int { return version(a) - version(b) })
	return dirs[len(dirs)-1]
}
