package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

// bin is the outbox-relay binary built for this test run: the tests run it
// as a real process, as an operator would.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "outbox-relay-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "outbox-relay")
	out, err := exec.Command("go", "build", "-race", "-o", bin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build outbox-relay: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// command returns the binary ready to run with args and env added to a
// copy of this process's environment without any OUTBOX_ variable.
func command(ctx context.Context, env map[string]string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OUTBOX_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// runBin runs the binary to completion and returns its output and exit code.
func runBin(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var o, e bytes.Buffer
	cmd := command(ctx, env, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// baseEnv points the binary at the test's table and the test servers.
func baseEnv(e *testenv.Env) map[string]string {
	return map[string]string{
		"OUTBOX_DATABASE_URL": testenv.DatabaseURL(),
		"OUTBOX_AMQP_URL":     testenv.AMQPURL(),
		"OUTBOX_TABLE":        e.Table.String(),
		"OUTBOX_METRICS_ADDR": "",
	}
}

func TestBadConfigExits2NamingTheVariable(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-Pa55"
	for _, tc := range []struct{ key, value string }{
		{"BATCH_SIZE", "lots"},
		{"BATCH_SIZE", "0"},
		{"POLL_INTERVAL", "fast"},
		{"POLL_INTERVAL", "0s"},
		{"MAX_ATTEMPTS", "0"},
		{"DATABASE_URL", "postgres://u:" + secret + "@host:notaport/db"},
		{"DATABASE_URL", "postgres://u:" + secret + "@host/db?sslmode=bogus"},
		{"AMQP_URL", "http://u:" + secret + "@host/"},
		{"AMQP_URL", "amqp://u:" + secret + "@host:notaport/"},
		{"AMQP_URL", "amqp://guest:guest@localhost/, amqp://u:" + secret + "@h:x/"},
		{"AMQP_PASSWORD_FILE", "/nonexistent/" + secret},
		{"TABLE", "a.b.c"},
		{"TABLE", `"unterminated`},
		{"TABLE", strings.Repeat("t", 60)},
		{"MANDATORY", "maybe"},
		{"METRICS_ADDR", "nonsense"},
		{"LOG_LEVEL", "loud"},
		{"LOG_FORMAT", "xml"},
		{"SHUTDOWN_TIMEOUT", "-1s"},
		{"RETRY_BACKOFF_MAX", "1ms"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			t.Parallel()
			// The database and broker URLs point nowhere: a bad value must
			// stop the binary before it tries to connect.
			env := map[string]string{
				"OUTBOX_DATABASE_URL": "postgres://postgres@127.0.0.1:1/none",
				"OUTBOX_AMQP_URL":     "amqp://guest:guest@127.0.0.1:1/",
				"OUTBOX_" + tc.key:    tc.value,
			}
			begin := time.Now()
			stdout, stderr, code := runBin(t, env, "run")
			if code != exitUsage {
				t.Errorf("exit code %d, want %d; stderr: %s", code, exitUsage, stderr)
			}
			if took := time.Since(begin); took > 5*time.Second {
				t.Errorf("took %s: it should fail before connecting", took)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			if lines := strings.Count(strings.TrimSpace(stderr), "\n") + 1; lines != 1 || !strings.Contains(stderr, "OUTBOX_"+tc.key+":") {
				t.Errorf("stderr = %q; want one line naming OUTBOX_%s", stderr, tc.key)
			}
			if strings.Contains(stderr, secret) {
				t.Errorf("stderr shows the secret: %q", stderr)
			}
		})
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	t.Parallel()
	stdout, _, code := runBin(t, nil, "-h")
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	ct := reflect.TypeOf(config{})
	for i := range ct.NumField() {
		f := ct.Field(i)
		key := f.Tag.Get("envconfig")
		if key == "" {
			continue
		}
		line := ""
		for _, l := range strings.Split(stdout, "\n") {
			if strings.HasPrefix(l, "OUTBOX_"+key+" ") {
				line = l
			}
		}
		if line == "" || f.Tag.Get("desc") == "" || !strings.Contains(line, f.Tag.Get("desc")) || !strings.Contains(line, f.Tag.Get("default")) {
			t.Errorf("-h does not document OUTBOX_%s with its default and meaning:\n%s", key, stdout)
		}
	}
}

func TestUnknownCommandExits2(t *testing.T) {
	t.Parallel()
	_, stderr, code := runBin(t, nil, "frobnicate")
	if code != exitUsage || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	_, stderr, code = runBin(t, nil, "status", "-o", "yaml")
	if code != exitUsage || !strings.Contains(stderr, "want table or json") {
		t.Errorf("status -o yaml: exit %d, stderr %q", code, stderr)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	stdout, _, code := runBin(t, nil, "version")
	if code != 0 || !strings.HasPrefix(stdout, "outbox-relay ") {
		t.Errorf("exit %d, stdout %q", code, stdout)
	}
}

func TestMigrateIsIdempotentAndSafeConcurrently(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	env := baseEnv(e)

	const n = 5
	outs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stdout, stderr, code := runBin(t, env, "migrate")
			if code != 0 {
				t.Errorf("migrate %d: exit %d: %s", i, code, stderr)
			}
			outs[i] = stdout
		}()
	}
	wg.Wait()
	all := strings.Join(outs, "")
	if got := strings.Count(all, "applied 001_outbox"); got != 1 {
		t.Errorf("%d of %d concurrent migrates applied 001; want exactly 1:\n%s", got, n, all)
	}
	if got := strings.Count(all, "is up to date"); got != n-1 {
		t.Errorf("%d said up to date; want %d:\n%s", got, n-1, all)
	}
	stdout, _, code := runBin(t, env, "migrate")
	if code != 0 || !strings.Contains(stdout, "is up to date") {
		t.Errorf("second migrate: exit %d, %q", code, stdout)
	}
	var versions int
	if err := e.Pool.QueryRow(context.Background(), "select count(*) from "+e.Table.Derived("schema_migrations")).Scan(&versions); err != nil {
		t.Fatal(err)
	}
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if versions != len(ms) {
		t.Errorf("%d migrations recorded, want %d", versions, len(ms))
	}
}

func TestMigratePrintIsPlainSQL(t *testing.T) {
	t.Parallel()
	stdout, _, code := runBin(t, map[string]string{"OUTBOX_TABLE": "app.events"}, "migrate", "-print")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{`create table "app"."events"`, `"app"."events_enqueue"`, `'app.events'`} {
		if !strings.Contains(stdout, want) {
			t.Errorf("printed SQL lacks %s", want)
		}
	}
}

// relayProc is a running relay process.
type relayProc struct {
	cmd    *exec.Cmd
	stderr *testenv.Buffer
	done   chan struct{}
	err    error
}

// startRelay starts `outbox-relay run` and stops it with SIGKILL at the end
// of the test if the test has not stopped it.
func startRelay(t *testing.T, env map[string]string) *relayProc {
	t.Helper()
	p := &relayProc{cmd: command(context.Background(), env, "run"), stderr: &testenv.Buffer{}, done: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("relay stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

// stop sends SIGTERM and returns the exit code.
func (p *relayProc) stop(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(40 * time.Second):
		t.Fatalf("relay did not exit after SIGTERM")
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRunStatusAndShutdown runs the binary as an operator would: status
// before, during and after; probes; SIGTERM exits 0.
func TestRunStatusAndShutdown(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	ctx := context.Background()
	ex := e.Exchange(t, "ex", "topic")
	q := e.Queue(t, "q", ex, "#")
	recv := e.Consume(t, q)
	env := baseEnv(e)
	env["OUTBOX_METRICS_ADDR"] = testenv.FreeAddr(t)

	if _, err := e.Pool.Exec(ctx, `insert into `+e.Table.Ident()+` (exchange, routing_key, payload, created_at)
		values ($1, 'a', 'x', now() - interval '5 seconds'), ($1, 'b', 'y', now()), ($1, 'c', 'z', now())`, ex); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Pool.Exec(ctx, `update `+e.Table.Ident()+` set dead_at = now(), attempts = 10, last_error = 'test' where routing_key = 'c'`); err != nil {
		t.Fatal(err)
	}
	st := status(t, env)
	if st["pending"] != 2.0 || st["dead"] != 1.0 || st["leader"] != nil {
		t.Errorf("status before run = %v; want pending 2, dead 1, no leader", st)
	}
	if age, _ := st["oldest_pending_age_seconds"].(float64); age < 5 {
		t.Errorf("oldest_pending_age_seconds = %v, want >= 5", st["oldest_pending_age_seconds"])
	}
	stdout, _, code := runBin(t, env, "status")
	if code != 0 || !strings.Contains(stdout, "pending") || !strings.Contains(stdout, "dead") {
		t.Errorf("status table: exit %d:\n%s", code, stdout)
	}

	p := startRelay(t, env)
	testenv.Receive(t, recv, 2, 15*time.Second)
	base := "http://" + env["OUTBOX_METRICS_ADDR"]
	testenv.WaitFor(t, 10*time.Second, "/readyz to answer 200", func() bool {
		code, _ := get(base + "/readyz")
		return code == http.StatusOK
	})
	if code, _ := get(base + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	_, metrics := get(base + "/metrics")
	for _, want := range []string{"outbox_published_total 2", "outbox_leader 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	st = status(t, env)
	if st["pending"] != 0.0 || st["dead"] != 1.0 || st["leader"] == nil {
		t.Errorf("status while running = %v; want pending 0, dead 1, a leader", st)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0\n%s", code, p.stderr.String())
	}
	if st := status(t, env); st["leader"] != nil {
		t.Errorf("leader after stop = %v", st["leader"])
	}
}

func status(t *testing.T, env map[string]string) map[string]any {
	t.Helper()
	stdout, stderr, code := runBin(t, env, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, stdout)
	}
	for _, k := range []string{"pending", "dead", "oldest_pending_age_seconds", "leader"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status -o json lacks %q", k)
		}
	}
	return st
}

// TestOddTableNames runs migrate and the relay end to end against table
// names that need quoting, including ones that would inject SQL if they were
// spliced as text.
func TestOddTableNames(t *testing.T) {
	t.Parallel()
	quote := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	for name, tc := range map[string]struct {
		schemaSuffix, table string
		quoted              bool
	}{
		"quotes and spaces": {"", `Tab"le With Space`, true},
		"injection":         {"", "x; drop table %s; --", false},
		"dots and dollars":  {".we.ird", "x$body$y", true},
		"upper case kept":   {"", "Outbox", false},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := testenv.New(t, testenv.WithoutMigrate())
			ctx := context.Background()
			canary := "canary_" + e.Name[len(e.Name)-8:] // short: names are limited
			if _, err := e.Pool.Exec(ctx, "create table public."+canary+" (x int)"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _, _ = e.Pool.Exec(context.Background(), "drop table public."+canary) })
			schemaName := e.Name + tc.schemaSuffix
			if tc.schemaSuffix != "" {
				t.Cleanup(func() { _, _ = e.Pool.Exec(context.Background(), "drop schema "+quote(schemaName)+" cascade") })
			}
			table := strings.ReplaceAll(tc.table, "%s", canary)
			env := baseEnv(e)
			env["OUTBOX_TABLE"] = schemaName + "." + table
			if tc.quoted {
				env["OUTBOX_TABLE"] = quote(schemaName) + "." + quote(table)
			}
			if _, stderr, code := runBin(t, env, "migrate"); code != 0 {
				t.Fatalf("migrate %s: exit %d: %s", env["OUTBOX_TABLE"], code, stderr)
			}
			if _, err := e.Pool.Exec(ctx, "select 1 from public."+canary); err != nil {
				t.Fatalf("canary table gone: %v", err)
			}
			ex := e.Exchange(t, "ex", "fanout")
			recv := e.Consume(t, e.Queue(t, "q", ex, ""))
			var id string
			fn := quote(schemaName) + "." + quote(table+"_enqueue")
			if err := e.Pool.QueryRow(ctx, "select "+fn+"($1, 'k', 'hello'::text)::text", ex).Scan(&id); err != nil {
				t.Fatalf("enqueue through %s: %v", fn, err)
			}
			startRelay(t, env)
			if d := testenv.Receive(t, recv, 1, 15*time.Second)[0]; d.MessageId != id || string(d.Body) != "hello" {
				t.Errorf("received %s %q, want %s hello", d.MessageId, d.Body, id)
			}
		})
	}
}

// TestPythonProducer runs the README's Python example: psycopg2 writes
// through outbox_enqueue() in its own transaction, and only the committed
// events arrive.
func TestPythonProducer(t *testing.T) {
	t.Parallel()
	python := "/usr/bin/python3" // Debian's, where python3-psycopg2 installs
	if out, err := exec.Command(python, "-c", "import psycopg2").CombinedOutput(); err != nil {
		t.Fatalf("%s cannot import psycopg2 (%v: %s)\nhint: apt-get install python3-psycopg2, or run `bash .ci/run`", python, err, out)
	}
	e := testenv.New(t)
	ex := e.Exchange(t, "orders", "topic")
	q := e.Queue(t, "q", ex, "order.*")
	recv := e.Consume(t, q)

	out, err := exec.Command(python, "../../testdata/producer.py", testenv.DatabaseURL(), e.Table.Schema+"."+e.Table.Name, ex, "5").CombinedOutput()
	if err != nil {
		t.Fatalf("producer.py: %v\n%s", err, out)
	}
	committed := map[string]bool{}
	var rolledBack string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "rolled back "); ok {
			rolledBack = id
		} else {
			committed[sc.Text()] = true
		}
	}
	if len(committed) != 5 || rolledBack == "" {
		t.Fatalf("producer output:\n%s", out)
	}

	startRelay(t, baseEnv(e))
	for _, d := range testenv.Receive(t, recv, 5, 15*time.Second) {
		if !committed[d.MessageId] {
			t.Errorf("received %s, not a committed message", d.MessageId)
		}
		if d.ContentType != "application/json" || d.Headers["source"] != "python" {
			t.Errorf("message %s: content type %q, headers %v", d.MessageId, d.ContentType, d.Headers)
		}
		delete(committed, d.MessageId)
	}
	select {
	case d := <-recv:
		t.Errorf("unexpected message %s (%s); rolled back was %s", d.MessageId, d.RoutingKey, rolledBack)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestSecretsStayOutOfLogs runs the relay with passwords in both URLs and
// in the password file, against servers that refuse them, and checks that
// no password shows up in its logs (text and JSON), its metrics or its
// status output.
func TestSecretsStayOutOfLogs(t *testing.T) {
	t.Parallel()
	e := testenv.New(t)
	const dbSecret, urlSecret, fileSecret = "db-Secr3t-pw", "url-Secr3t-pw", "file-Secr3t-pw"
	pwFile := filepath.Join(t.TempDir(), "amqp-password")
	if err := os.WriteFile(pwFile, []byte(fileSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			env := baseEnv(e)
			env["OUTBOX_LOG_FORMAT"] = format
			env["OUTBOX_LOG_LEVEL"] = "debug"
			env["OUTBOX_METRICS_ADDR"] = testenv.FreeAddr(t)
			// The database URL works (trust auth ignores the password);
			// the broker refuses the user, whatever the password.
			env["OUTBOX_DATABASE_URL"] = strings.Replace(testenv.DatabaseURL(), "postgres@", "postgres:"+dbSecret+"@", 1)
			env["OUTBOX_AMQP_URL"] = "amqp://nobody:" + urlSecret + "@127.0.0.1:5672/,amqp://nobody:" + urlSecret + "@127.0.0.1:1/"
			env["OUTBOX_AMQP_PASSWORD_FILE"] = pwFile
			p := startRelay(t, env)
			testenv.WaitFor(t, 30*time.Second, "two failed broker connects", func() bool {
				return strings.Count(p.stderr.String(), "broker connect failed") >= 2
			})
			_, metrics := get("http://" + env["OUTBOX_METRICS_ADDR"] + "/metrics")
			status, _, _ := runBin(t, env, "status", "-o", "json")
			if code := p.stop(t); code != 0 {
				t.Errorf("exit code %d after SIGTERM", code)
			}
			for what, out := range map[string]string{"logs": p.stderr.String(), "metrics": metrics, "status": status} {
				for _, secret := range []string{dbSecret, urlSecret, fileSecret} {
					if strings.Contains(out, secret) {
						t.Errorf("%s contain %s:\n%s", what, secret, out)
					}
				}
			}
			if !strings.Contains(p.stderr.String(), "nobody") {
				t.Errorf("logs do not name the refused user:\n%s", p.stderr.String())
			}
		})
	}
}
