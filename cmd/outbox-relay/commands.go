package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/schema"
)

// connect opens one session-level connection and resolves the table.
func connect(ctx context.Context, e *env) (*pgx.Conn, schema.Table, error) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, e.cfg.DatabaseURL.reveal())
	if err != nil {
		return nil, schema.Table{}, fmt.Errorf("connect to database: %w", err)
	}
	t, err := e.cfg.table.Resolve(cctx, conn)
	if err != nil {
		_ = conn.Close(ctx)
		return nil, t, err
	}
	return conn, t, nil
}

func cmdMigrate(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	print := fs.Bool("print", false, "print the SQL for OUTBOX_TABLE instead of applying it")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if *print {
		t := e.cfg.table
		if t.Schema == "" {
			t.Schema = "public"
			fmt.Fprintln(e.stderr, "outbox-relay migrate: OUTBOX_TABLE names no schema; printing for schema public")
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
	conn, t, err := connect(ctx, e)
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
	if len(applied) == 0 {
		fmt.Fprintf(e.stdout, "%s is up to date\n", t)
	}
	return nil
}

func cmdStatus(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	output := fs.String("o", "table", "output format: table or json")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if *output != "table" && *output != "json" {
		return &usageError{fmt.Errorf("-o %q: want table or json", *output)}
	}
	conn, t, err := connect(ctx, e)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st, err := relay.ReadStatus(ctx, conn, t)
	if err != nil {
		return err
	}
	if *output == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	leader := "none"
	if st.Leader != nil {
		leader = fmt.Sprintf("%s (pid %d, %s, since %s)", st.Leader.ApplicationName, st.Leader.PID,
			st.Leader.ClientAddr, st.Leader.Since.Format(time.RFC3339))
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "table\t%s\n", st.Table)
	fmt.Fprintf(w, "pending\t%d (%d available now)\n", st.Pending, st.Available)
	fmt.Fprintf(w, "dead\t%d\n", st.Dead)
	fmt.Fprintf(w, "oldest pending\t%s\n", formatAge(st.OldestPendingAgeSeconds))
	fmt.Fprintf(w, "leader\t%s\n", leader)
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
	return w.Flush()
}

func formatAge(s float64) string {
	if s <= 0 {
		return "-"
	}
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}
