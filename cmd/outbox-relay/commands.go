package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// parseRun parses `run`, which takes no flags: its configuration is the
// environment.
func parseRun(args []string) (action, error) {
	f := newFlags("run", "[run]", "Relays the rows of OUTBOX_TABLE to RabbitMQ until SIGTERM or SIGINT, then waits for the\n"+
		"confirms in flight and exits 0. `outbox-relay` alone runs it.")
	if err := f.parseNoArgs(args); err != nil {
		var help *helpRequest
		if errors.As(err, &help) {
			var b strings.Builder
			envTable(&b)
			help.text += "\n" + b.String()
		}
		return nil, err
	}
	return cmdRun, nil
}

// connect opens one session-level connection and resolves t, the outbox
// table or the inbox table.
func connect(ctx context.Context, e *env, t schema.Table) (*pgx.Conn, schema.Table, error) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, e.cfg.DatabaseURL.reveal())
	if err != nil {
		return nil, schema.Table{}, fmt.Errorf("connect to database: %w", err)
	}
	t, err = t.Resolve(cctx, conn)
	if err != nil {
		_ = conn.Close(ctx)
		return nil, t, err
	}
	return conn, t, nil
}

// outboxMissing is what to do when the outbox table does not exist.
const outboxMissing = "`outbox-relay migrate` to create it (or set OUTBOX_TABLE)"

// connectExisting is connect for the commands that read the table: a
// table that does not exist says so, and missing, how to create it, rather
// than failing on the first query.
func connectExisting(ctx context.Context, e *env, t schema.Table, missing string) (*pgx.Conn, schema.Table, error) {
	conn, t, err := connect(ctx, e, t)
	if err != nil {
		return nil, t, err
	}
	var exists bool
	if err = conn.QueryRow(ctx, "select to_regclass($1) is not null", t.Ident()).Scan(&exists); err == nil && !exists {
		err = fmt.Errorf("table %s does not exist: run %s", t, missing)
	}
	if err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, t, err
	}
	return conn, t, nil
}

func cmdMigrate(args []string) (action, error) {
	f := newFlags("migrate", "migrate [-print]", "Creates or upgrades OUTBOX_TABLE, its trigger and functions. Idempotent, safe to run\n"+
		"from every replica at once.")
	print := f.Bool("print", false, "print the SQL for OUTBOX_TABLE instead of applying it")
	if err := f.parseNoArgs(args); err != nil {
		return nil, err
	}
	return func(ctx context.Context, e *env) error {
		if *print {
			return printMigrations(e)
		}
		conn, t, err := connect(ctx, e, e.cfg.table)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		applied, err := schema.Migrate(ctx, conn, t)
		for _, m := range applied {
			fmt.Fprintf(e.stdout, "applied %03d_%s to %s\n", m.Version, m.Name, t)
		}
		if err != nil {
			return err
		}
		changed, err := migratePartitions(ctx, e, conn, t, applied)
		if err != nil {
			return err
		}
		if len(applied) == 0 && !changed {
			fmt.Fprintf(e.stdout, "%s is up to date\n", t)
		}
		return nil
	}, nil
}

// partitionsWait bounds migrate's wait for the claims in flight when it
// changes P: a relay's batch settles within two confirm timeouts unless its
// broker blocks.
const partitionsWait = 2 * time.Minute

// migratePartitions records OUTBOX_PARTITIONS as the table's number of
// partitions, or the default for a table this migrate created, and reports
// whether it changed it. Unset, an existing table keeps its number.
func migratePartitions(ctx context.Context, e *env, conn *pgx.Conn, t schema.Table, applied []schema.Migration) (bool, error) {
	want := e.cfg.Partitions
	if want == 0 && len(applied) > 0 && applied[0].Version == 1 {
		want = schema.DefaultPartitions
	}
	if want == 0 {
		return false, nil
	}
	old, err := schema.SetPartitions(ctx, conn, t, want, partitionsWait)
	if err != nil {
		return false, err
	}
	if old != want {
		fmt.Fprintf(e.stdout, "partitions of %s: %d, were %d\n", t, want, old)
	}
	return old != want, nil
}

// printMigrations writes the SQL of every migration for OUTBOX_TABLE.
func printMigrations(e *env) error {
	t := e.cfg.table
	if t.Schema == "" {
		t.Schema = "public"
		e.log.Warn("OUTBOX_TABLE names no schema; printing for schema public")
	}
	ms, err := schema.Migrations()
	if err != nil {
		return err
	}
	for _, m := range ms {
		sql, err := m.SQL(t)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "-- migration %03d_%s for %s\n%s\n", m.Version, m.Name, t, sql)
	}
	return nil
}

// outputFlag adds -o, table or json, checked by checkOutput.
func outputFlag(f *flags) *string {
	return f.String("o", "table", "output format: table or json")
}

func checkOutput(o string) error {
	if o != "table" && o != "json" {
		return fmt.Errorf("-o %q: want table or json", o)
	}
	return nil
}

func cmdStatus(args []string) (action, error) {
	f := newFlags("status", "status [-o json]", "Shows pending rows (and how many are available now), dead rows, the age of the oldest\n"+
		"pending row, the same per exchange and per partition, the table's relays and the partitions\n"+
		"each owns. Reads the database only.")
	output := outputFlag(f)
	if err := f.parseNoArgs(args); err != nil {
		return nil, err
	}
	if err := checkOutput(*output); err != nil {
		return nil, err
	}
	return func(ctx context.Context, e *env) error { return showStatus(ctx, e, *output) }, nil
}

func showStatus(ctx context.Context, e *env, output string) error {
	conn, t, err := connectExisting(ctx, e, e.cfg.table, outboxMissing)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st, err := relay.ReadStatus(ctx, conn, t)
	if err != nil {
		return err
	}
	if output == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "table\t%s\n", st.Table)
	fmt.Fprintf(w, "pending\t%d (%d available now)\n", st.Pending, st.Available)
	fmt.Fprintf(w, "dead\t%d\n", st.Dead)
	fmt.Fprintf(w, "oldest pending\t%s\n", formatAge(st.OldestPendingAgeSeconds))
	if st.Partitions == 1 {
		leader := "none"
		if st.Leader != nil {
			leader = fmt.Sprintf("%s (pid %d, %s, since %s)", cell(st.Leader.ApplicationName), st.Leader.PID,
				st.Leader.ClientAddr, st.Leader.Since.Format(time.RFC3339))
		}
		fmt.Fprintf(w, "leader\t%s\n", leader)
	}
	fmt.Fprintf(w, "partitions\t%s\n", partitionsLine(st))
	if len(st.Exchanges) > 0 {
		fmt.Fprintf(w, "\nEXCHANGE\tPENDING\tDEAD\tOLDEST PENDING\n")
		for _, x := range st.Exchanges {
			name := x.Exchange
			if name == "" {
				name = "(default)"
			}
			fmt.Fprintf(w, "%s\t%d\t%d\t%s\n", cell(name), x.Pending, x.Dead, formatAge(x.OldestPendingAgeSeconds))
		}
	}
	showRelays(w, st)
	return w.Flush()
}

// partitionsLine sums up the table's partitions: P, and those without an
// owner.
func partitionsLine(st relay.Status) string {
	var free, stranded int
	for _, p := range st.ByPartition {
		if p.Owner == nil {
			free++
			if p.Pending > 0 {
				stranded++
			}
		}
	}
	line := fmt.Sprintf("%d, %d without owner", st.Partitions, free)
	if stranded > 0 {
		line += fmt.Sprintf(" (%d of them with pending rows: nobody publishes those)", stranded)
	}
	return line
}

// showRelays writes the table's relays and, with several partitions, the
// breakdown per partition.
func showRelays(w io.Writer, st relay.Status) {
	names := map[int32]string{}
	if len(st.Relays) > 0 {
		fmt.Fprintf(w, "\nRELAY\tPID\tBROKER\tCLIENT\tSINCE\tMEMBER\tPARTITIONS\n")
	}
	for _, r := range st.Relays {
		names[r.PID] = cell(r.Name)
		member := "no"
		if r.Member {
			member = "yes"
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", cell(r.Name), r.PID, dash(cell(r.Broker)), r.ClientAddr,
			r.Since.Format(time.RFC3339), member, dash(joinInts(r.Owned)))
	}
	if st.Partitions <= 1 {
		return
	}
	fmt.Fprintf(w, "\nPARTITION\tOWNER\tPENDING\tAVAILABLE\tDEAD\tOLDEST PENDING\n")
	for _, p := range st.ByPartition {
		owner := "none"
		if p.Owner != nil {
			owner = fmt.Sprintf("%s (pid %d)", names[*p.Owner], *p.Owner)
		}
		fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%d\t%s\n", p.Partition, owner, p.Pending, p.Available, p.Dead,
			formatAge(p.OldestPendingAgeSeconds))
	}
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func formatAge(s float64) string {
	if s <= 0 {
		return "-"
	}
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}
