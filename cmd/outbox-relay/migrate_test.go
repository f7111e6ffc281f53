package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/schema"
)

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

// migrate gives a table it creates the default number of partitions,
// records OUTBOX_PARTITIONS when set, and leaves it alone when unset; a
// relay told another number refuses the table, naming both.
func TestMigrateRecordsPartitions(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	env := baseEnv(e)
	partitions := func() int {
		t.Helper()
		p, _, err := schema.ReadPartitions(context.Background(), e.Pool, e.Table)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, stderr, code := runBin(t, env, "migrate"); code != 0 || partitions() != schema.DefaultPartitions {
		t.Fatalf("migrate: exit %d, %d partitions, want %d: %s", code, partitions(), schema.DefaultPartitions, stderr)
	}
	env["OUTBOX_PARTITIONS"] = "4"
	stdout, stderr, code := runBin(t, env, "migrate")
	if code != 0 || partitions() != 4 || !strings.Contains(stdout, "partitions of "+e.Table.String()+": 4, were 12") {
		t.Fatalf("migrate with OUTBOX_PARTITIONS=4: exit %d, %d partitions, %q %s", code, partitions(), stdout, stderr)
	}
	delete(env, "OUTBOX_PARTITIONS")
	if stdout, _, code := runBin(t, env, "migrate"); code != 0 || partitions() != 4 || !strings.Contains(stdout, "is up to date") {
		t.Fatalf("migrate without OUTBOX_PARTITIONS: exit %d, %d partitions, %q", code, partitions(), stdout)
	}
	env["OUTBOX_PARTITIONS"] = "6"
	env["OUTBOX_METRICS_ADDR"] = ""
	_, stderr, code = runBin(t, env, "run")
	if code == 0 || !strings.Contains(stderr, "OUTBOX_PARTITIONS=6") || !strings.Contains(stderr, "has 4") {
		t.Fatalf("run with OUTBOX_PARTITIONS=6 on a table of 4: exit %d, %s", code, stderr)
	}
}
