package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/outbox-relay/outbox-relay/relay"
)

// cmdDead runs `dead list|retry|purge`.
func cmdDead(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return &usageError{errors.New("want dead list, dead retry or dead purge")}
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("dead "+sub, flag.ContinueOnError)
	var f relay.DeadFilter
	exchange := fs.String("exchange", "", "only rows for this exchange (\"(default)\" for the default exchange)")
	fs.DurationVar(&f.OlderThan, "older-than", 0, "only rows parked at least this long ago (e.g. 1h)")
	var output *string
	var limit *int
	var yes *bool
	switch sub {
	case "list":
		output = fs.String("o", "table", "output format: table or json")
		limit = fs.Int("limit", 100, "list at most this many rows")
	case "retry", "purge":
		fs.BoolVar(&f.All, "all", false, "every dead row (narrowed by -exchange and -older-than)")
		if sub == "purge" {
			yes = fs.Bool("yes", false, "really delete the rows: they are never published")
		}
	default:
		return &usageError{fmt.Errorf("unknown command dead %q (want list, retry or purge)", sub)}
	}
	fs.SetOutput(e.stderr)
	if err := fs.Parse(args); err != nil {
		return &usageError{err}
	}
	for _, a := range fs.Args() {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || sub == "list" {
			return &usageError{fmt.Errorf("unexpected argument %q (flags go before ids)", a)}
		}
		f.IDs = append(f.IDs, id)
	}
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "exchange" {
			x := strings.TrimSpace(*exchange)
			if x == "(default)" {
				x = ""
			}
			f.Exchange = &x
		}
	})
	if sub != "list" && len(f.IDs) == 0 && !f.All {
		return &usageError{fmt.Errorf("dead %s: give row ids or -all", sub)}
	}
	if output != nil && *output != "table" && *output != "json" {
		return &usageError{fmt.Errorf("-o %q: want table or json", *output)}
	}
	if yes != nil && !*yes {
		return &usageError{errors.New("dead purge deletes rows for good: add -yes to confirm")}
	}

	conn, t, err := connect(ctx, e)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	switch sub {
	case "list":
		rows, err := relay.ListDead(ctx, conn, t, f, *limit)
		if err != nil {
			return err
		}
		return printDead(e, rows, *output)
	case "retry":
		res, err := relay.RetryDead(ctx, conn, t, f)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "retried %d dead row(s)%s; they are available now\n", len(res.IDs), idList(res.IDs))
		for _, s := range res.Skipped {
			fmt.Fprintf(e.stdout, "%d row(s) not retried: %s (check %s)%s; fix or purge them\n", len(s.IDs), s.Reason, s.Check, idList(s.IDs))
		}
	case "purge":
		ids, err := relay.PurgeDead(ctx, conn, t, f)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "purged %d dead row(s)%s\n", len(ids), idList(ids))
	}
	return nil
}

func idList(ids []int64) string {
	if len(ids) == 0 {
		return ""
	}
	s := make([]string, 0, 20)
	for i, id := range ids {
		if i == 20 {
			s = append(s, fmt.Sprintf("… (%d more)", len(ids)-20))
			break
		}
		s = append(s, strconv.FormatInt(id, 10))
	}
	return ": " + strings.Join(s, ", ")
}

func printDead(e *env, rows []relay.DeadRow, output string) error {
	if output == "json" {
		if rows == nil {
			rows = []relay.DeadRow{}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	if len(rows) == 0 {
		fmt.Fprintln(e.stdout, "no dead rows")
		return nil
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tEXCHANGE\tROUTING KEY\tATTEMPTS\tDEAD FOR\tAGE\tLAST ERROR")
	for _, r := range rows {
		ex := r.Exchange
		if ex == "" {
			ex = "(default)"
		}
		lastErr := ""
		if r.LastError != nil {
			lastErr = *r.LastError
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%s\t%s\t%s\n", r.ID, cell(ex), cell(r.RoutingKey), r.Attempts,
			time.Since(r.DeadAt).Round(time.Second), time.Since(r.CreatedAt).Round(time.Second), cell(lastErr))
	}
	return w.Flush()
}

// maxCell is the most bytes a value takes in the table of `dead list`: a
// row parked by migration 004 may have a routing key of 64 KiB (`-o json`
// shows it whole).
const maxCell = 80

// cell clips s to maxCell bytes, on a rune boundary, with an ellipsis.
func cell(s string) string { return relay.Clip(s, maxCell) }
