package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"sigs.k8s.io/yaml"

	"github.com/outbox-relay/outbox-relay/inbox"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/schema"
)

// inboxEnv points the binary at an inbox table in the test's schema.
func inboxEnv(e *testenv.Env, table string) (map[string]string, schema.Table) {
	env := baseEnv(e)
	env["OUTBOX_INBOX_TABLE"] = e.Name + "." + table
	return env, schema.Table{Schema: e.Name, Name: table}
}

// claimTwice claims one new message id twice in table, each time in a
// transaction of its own, and returns both answers: true, false for a
// working inbox.
func claimTwice(t *testing.T, e *testenv.Env, table schema.Table) (first, second bool) {
	t.Helper()
	ctx := context.Background()
	ib, id := inbox.New(table), outbox.NewMessageID().String()
	for _, got := range []*bool{&first, &second} {
		err := pgx.BeginFunc(ctx, e.Pool, func(tx pgx.Tx) (err error) {
			*got, err = ib.Claim(ctx, tx, "billing", id)
			return err
		})
		if err != nil {
			t.Fatalf("claim in %s: %v", table, err)
		}
	}
	return first, second
}

// `inbox migrate` creates a working inbox, from several processes at once,
// and running it again keeps the claims.
func TestInboxMigrateIsIdempotentAndSafeConcurrently(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	env, table := inboxEnv(e, "events_inbox")
	want := fmt.Sprintf("inbox %s is ready\n", table)

	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if stdout, stderr, code := runBin(t, env, "inbox", "migrate"); code != 0 || stdout != want {
				t.Errorf("migrate %d: exit %d, stdout %q (want %q): %s", i, code, stdout, want, stderr)
			}
		})
	}
	wg.Wait()
	if first, second := claimTwice(t, e, table); !first || second {
		t.Fatalf("claims after migrate: %t, %t; want true, false", first, second)
	}
	if stdout, stderr, code := runBin(t, env, "inbox", "migrate"); code != 0 || stdout != want {
		t.Errorf("migrate again: exit %d, stdout %q: %s", code, stdout, stderr)
	}
	var claims int
	if err := e.Pool.QueryRow(context.Background(), "select count(*) from "+table.Ident()).Scan(&claims); err != nil {
		t.Fatal(err)
	}
	if claims != 1 {
		t.Errorf("%d claims after migrating again, want the 1 made before", claims)
	}
}

// An unqualified OUTBOX_INBOX_TABLE goes where the connection's search_path
// says, and the output names it in full.
func TestInboxMigrateUnqualifiedFollowsSearchPath(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	u, err := url.Parse(testenv.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("options", "-csearch_path="+e.Name)
	u.RawQuery = q.Encode()
	env := baseEnv(e)
	env["OUTBOX_DATABASE_URL"] = u.String()
	stdout, stderr, code := runBin(t, env, "inbox", "migrate") // OUTBOX_INBOX_TABLE unset: inbox
	table := schema.Table{Schema: e.Name, Name: inbox.TableDefault}
	if want := fmt.Sprintf("inbox %s is ready\n", table); code != 0 || stdout != want {
		t.Fatalf("exit %d, stdout %q (want %q): %s", code, stdout, want, stderr)
	}
	if first, second := claimTwice(t, e, table); !first || second {
		t.Errorf("claims: %t, %t; want true, false", first, second)
	}
}

// `inbox migrate -print` connects to nothing and changes nothing; what it
// prints, applied as it is, creates a working inbox, schema included.
func TestInboxMigratePrint(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	printed := schema.Table{Schema: e.Name + "_printed", Name: "events_inbox"}
	t.Cleanup(func() {
		_, _ = e.Pool.Exec(context.Background(), "drop schema if exists "+pgx.Identifier{printed.Schema}.Sanitize()+" cascade")
	})
	env := map[string]string{
		"OUTBOX_DATABASE_URL": "postgres://postgres@127.0.0.1:1/nowhere",
		"OUTBOX_INBOX_TABLE":  printed.String(),
	}
	stdout, stderr, code := runBin(t, env, "inbox", "migrate", "-print")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"create schema if not exists " + pgx.Identifier{printed.Schema}.Sanitize(),
		"create table if not exists " + printed.Ident(),
		"create or replace function " + printed.Derived("claim"),
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("printed SQL lacks %s:\n%s", want, stdout)
		}
	}
	ctx := context.Background()
	var exists bool
	if err := e.Pool.QueryRow(ctx, "select to_regnamespace($1) is not null", printed.Schema).Scan(&exists); err != nil || exists {
		t.Fatalf("schema %s exists after -print (%v)", printed.Schema, err)
	}
	if _, err := e.Pool.Exec(ctx, stdout, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("apply the printed SQL: %v", err)
	}
	if first, second := claimTwice(t, e, printed); !first || second {
		t.Errorf("claims: %t, %t; want true, false", first, second)
	}
}

// `inbox prune` deletes the claims older than -older-than, however many
// batches that takes, reports how many, and keeps the rest.
func TestInboxPruneDeletesOnlyOldClaims(t *testing.T) {
	t.Parallel()
	e := testenv.New(t, testenv.WithoutMigrate())
	env, table := inboxEnv(e, "inbox")
	want := fmt.Sprintf("table %s does not exist: run `outbox-relay inbox migrate` to create it (or set OUTBOX_INBOX_TABLE)", table)
	if _, stderr, code := runBin(t, env, "inbox", "prune", "-older-than", "1h"); code != exitFailure || stderr != "outbox-relay: "+want+"\n" {
		t.Errorf("prune before migrate: exit %d, stderr %q; want %q", code, stderr, want)
	}
	if _, stderr, code := runBin(t, env, "inbox", "migrate"); code != 0 {
		t.Fatalf("migrate: exit %d: %s", code, stderr)
	}
	ctx := context.Background()
	for _, ins := range []struct {
		n   int
		age string
	}{{25, "8 days"}, {5, "6 days"}} {
		if _, err := e.Pool.Exec(ctx, "insert into "+table.Ident()+" (consumer, message_id, received_at) "+
			"select 'c' || (i % 2), gen_random_uuid(), now() - $2::interval from generate_series(1, $1) i", ins.n, ins.age); err != nil {
			t.Fatal(err)
		}
	}
	stdout, stderr, code := runBin(t, env, "inbox", "prune", "-batch", "10", "-older-than", "168h")
	if want := fmt.Sprintf("pruned 25 claim(s) older than 168h from %s\n", table); code != 0 || stdout != want {
		t.Errorf("prune: exit %d, stdout %q (want %q): %s", code, stdout, want, stderr)
	}
	var left, young int
	if err := e.Pool.QueryRow(ctx, "select count(*), count(*) filter (where received_at > now() - interval '7 days') from "+
		table.Ident()).Scan(&left, &young); err != nil {
		t.Fatal(err)
	}
	if left != 5 || young != 5 {
		t.Errorf("%d claims left, %d of them younger than 7 days; want the 5 young ones", left, young)
	}
	stdout, _, code = runBin(t, env, "inbox", "prune", "-older-than", "168h")
	if want := fmt.Sprintf("pruned 0 claim(s) older than 168h from %s\n", table); code != 0 || stdout != want {
		t.Errorf("prune again: exit %d, stdout %q (want %q)", code, stdout, want)
	}
}

// The inbox's usage errors are one line with one prefix, exit 2, and come
// before any connection.
func TestInboxUsageErrors(t *testing.T) {
	t.Parallel()
	env := map[string]string{"OUTBOX_DATABASE_URL": "postgres://postgres@127.0.0.1:1/nowhere"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"inbox"}, "inbox needs a command: migrate or prune (outbox-relay inbox -h for help)"},
		{[]string{"inbox", "frob"}, `unknown command inbox "frob" (want migrate or prune; outbox-relay inbox -h for help)`},
		{[]string{"inbox", "prune"}, "inbox prune needs -older-than D, e.g. -older-than 168h (outbox-relay inbox prune -h for help)"},
		{[]string{"inbox", "prune", "-batch", "5"}, "inbox prune needs -older-than D, e.g. -older-than 168h (outbox-relay inbox prune -h for help)"},
		{[]string{"inbox", "prune", "-older-than", "a week"}, `invalid value "a week" for flag -older-than: want a duration such as 168h, 30m or 90s (outbox-relay inbox prune -h lists the flags)`},
		{[]string{"inbox", "prune", "-older-than", "168"}, `invalid value "168" for flag -older-than: want a duration such as 168h, 30m or 90s (outbox-relay inbox prune -h lists the flags)`},
		{[]string{"inbox", "prune", "-older-than", "0s"}, "-older-than 0s: want a positive duration, e.g. 168h"},
		{[]string{"inbox", "prune", "-older-than", "-1h"}, "-older-than -1h: want a positive duration, e.g. 168h"},
		{[]string{"inbox", "prune", "-older-than", "1h", "-batch", "0"}, "-batch 0: want a positive number of rows"},
		{[]string{"inbox", "prune", "-older-than", "1h", "now"}, `unexpected argument "now" (outbox-relay inbox prune -h for help)`},
		{[]string{"inbox", "migrate", "-print", "extra"}, `unexpected argument "extra" (outbox-relay inbox migrate -h for help)`},
		{[]string{"inbox", "migrate", "-force"}, "flag provided but not defined: -force (outbox-relay inbox migrate -h lists the flags)"},
	} {
		stdout, stderr, code := runBin(t, env, tc.args...)
		if want := "outbox-relay: " + tc.want + "\n"; code != exitUsage || stderr != want || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr\n got %q\nwant %q", tc.args, code, stdout, stderr, want)
		}
	}
}

// docs/inbox.md's commands and its CronJob run what the command accepts,
// with variables it knows.
func TestInboxDocsCommandsParse(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/inbox.md")
	if err != nil {
		t.Fatal(err)
	}
	var cmds [][]string
	for _, m := range regexp.MustCompile(`(?m)^outbox-relay (inbox [^#\n]*)`).FindAllStringSubmatch(string(doc), -1) {
		cmds = append(cmds, strings.Fields(m[1]))
	}
	yamls := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	if len(cmds) < 3 || len(yamls) != 1 {
		t.Fatalf("docs/inbox.md: %d inbox commands and %d YAML blocks; want the migrate, -print and prune examples and the CronJob", len(cmds), len(yamls))
	}
	var job struct {
		Kind string
		Spec struct {
			JobTemplate struct {
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Args []string
								Env  []struct{ Name string }
							}
						}
					}
				}
			}
		}
	}
	if err := yaml.Unmarshal([]byte(yamls[0][1]), &job); err != nil {
		t.Fatalf("the CronJob: %v", err)
	}
	known := gatherRelayFacts(t).env
	containers := job.Spec.JobTemplate.Spec.Template.Spec.Containers
	if job.Kind != "CronJob" || len(containers) != 1 {
		t.Fatalf("the YAML block is a %s with %d containers; want a CronJob with one", job.Kind, len(containers))
	}
	cmds = append(cmds, containers[0].Args)
	for _, v := range containers[0].Env {
		if !known[v.Name] {
			t.Errorf("the CronJob sets %s, which the relay does not read", v.Name)
		}
	}
	for _, args := range cmds {
		if len(args) < 2 || args[0] != "inbox" {
			t.Errorf("%q: want an inbox command", args)
		} else if _, err := cmdInbox(args[1:]); err != nil {
			t.Errorf("outbox-relay %s: %v", strings.Join(args, " "), err)
		}
	}
}
