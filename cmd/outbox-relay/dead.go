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
	"unicode"

	"github.com/outbox-relay/outbox-relay/relay"
)

// deadHelp is the text of `dead -h`.
const deadHelp = `Usage: outbox-relay dead list|retry|purge [flags] [ID...]

Inspects and repairs rows parked dead after OUTBOX_MAX_ATTEMPTS failed publishes.

  list    dead rows: id, exchange, routing key, attempts, how long dead, age, last error
  retry   make dead rows available now (attempts reset) and wake the relay
  purge   delete dead rows for good

outbox-relay dead <command> -h lists each one's flags. Flags and ids may come in any order.
`

// cmdDead parses `dead list|retry|purge`.
func cmdDead(args []string) (action, error) {
	if len(args) == 0 {
		return nil, errors.New("dead needs a command: list, retry or purge (outbox-relay dead -h for help)")
	}
	sub, args := args[0], args[1:]
	if isHelp(sub) {
		return nil, &helpRequest{deadHelp}
	}
	var f *flags
	switch sub {
	case "list":
		f = newFlags("dead list", "dead list [-exchange X] [-older-than D] [-limit N] [-o json]",
			"Lists dead rows, oldest first; -o json shows every field whole (the table clips long text).")
	case "retry":
		f = newFlags("dead retry", "dead retry [-all] [-exchange X] [-older-than D] [ID...]",
			"Makes dead rows available now, attempts reset, and wakes the relay. Give ids, or -all\n"+
				"(narrowed by -exchange and -older-than). Rows a check of the table would refuse stay dead\n"+
				"and are reported.")
	case "purge":
		f = newFlags("dead purge", "dead purge -yes [-all] [-exchange X] [-older-than D] [ID...]",
			"Deletes dead rows for good: they are never published. Give ids, or -all (narrowed by\n"+
				"-exchange and -older-than), and -yes.")
	default:
		return nil, fmt.Errorf("unknown command dead %q (want list, retry or purge; outbox-relay dead -h for help)", sub)
	}
	var filter relay.DeadFilter
	exchange := f.String("exchange", "", "only rows for this exchange (\"(default)\" for the default exchange)")
	f.durationVar(&filter.OlderThan, "older-than", "only rows parked at least this `duration` ago (e.g. 1h)")
	var output *string
	var limit *int
	var yes *bool
	if sub == "list" {
		output = outputFlag(f)
		limit = f.Int("limit", 100, "list at most this many rows")
	} else {
		f.BoolVar(&filter.All, "all", false, "every dead row (narrowed by -exchange and -older-than)")
	}
	if sub == "purge" {
		yes = f.Bool("yes", false, "really delete the rows: they are never published")
	}
	pos, err := f.parse(args)
	if err != nil {
		return nil, err
	}
	for _, a := range pos {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || sub == "list" {
			return nil, fmt.Errorf("unexpected argument %q (outbox-relay dead %s -h for help)", a, sub)
		}
		filter.IDs = append(filter.IDs, id)
	}
	f.Visit(func(fl *flag.Flag) {
		if fl.Name == "exchange" {
			x := strings.TrimSpace(*exchange)
			if x == "(default)" {
				x = ""
			}
			filter.Exchange = &x
		}
	})
	switch {
	case sub != "list" && len(filter.IDs) == 0 && !filter.All:
		return nil, fmt.Errorf("dead %s needs row ids or -all", sub)
	case output != nil:
		if err := checkOutput(*output); err != nil {
			return nil, err
		}
	case yes != nil && !*yes:
		return nil, errors.New("dead purge deletes rows for good: add -yes to confirm")
	}
	return func(ctx context.Context, e *env) error {
		if sub == "list" {
			return listDead(ctx, e, filter, *limit, *output)
		}
		return retryOrPurge(ctx, e, sub, filter)
	}, nil
}

// listDead prints the dead rows that filter selects.
func listDead(ctx context.Context, e *env, filter relay.DeadFilter, limit int, output string) error {
	conn, t, err := connectExisting(ctx, e, e.cfg.table, outboxMissing)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := relay.ListDead(ctx, conn, t, filter, limit)
	if err != nil {
		return err
	}
	return printDead(e, rows, output)
}

// retryOrPurge retries or purges the dead rows that filter selects.
func retryOrPurge(ctx context.Context, e *env, sub string, filter relay.DeadFilter) error {
	conn, t, err := connectExisting(ctx, e, e.cfg.table, outboxMissing)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if sub == "purge" {
		ids, err := relay.PurgeDead(ctx, conn, t, filter)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "purged %d dead row(s)%s\n", len(ids), idList(ids))
		return nil
	}
	res, err := relay.RetryDead(ctx, conn, t, filter)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "retried %d dead row(s)%s; they are available now\n", len(res.IDs), idList(res.IDs))
	for _, s := range res.Skipped {
		fmt.Fprintf(e.stdout, "%d row(s) not retried: %s (check %s)%s; fix or purge them\n", len(s.IDs), s.Reason, s.Check, idList(s.IDs))
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

// cell makes s one cell of a table: control characters (a newline or tab
// of a last error would break the table's lines and columns) become
// spaces, and it is clipped to maxCell bytes on a rune boundary, with an
// ellipsis.
func cell(s string) string {
	return relay.Clip(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s), maxCell)
}
