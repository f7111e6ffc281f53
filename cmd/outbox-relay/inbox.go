package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/inbox"
)

// inboxHelp is the text of `inbox -h`.
const inboxHelp = `Usage: outbox-relay inbox migrate|prune [flags]

Manages the consumers' inbox in the consumer's own database (OUTBOX_DATABASE_URL): the table
OUTBOX_INBOX_TABLE and its claim function, which make a consumer's work happen once per
message_id although messages arrive at least once. docs/inbox.md tells how to use them.

  migrate  create the inbox table, its received_at index and its claim function
  prune    delete claims older than -older-than, in batches

outbox-relay inbox <command> -h lists each one's flags.
`

// inboxMissing is what to do when the inbox table does not exist.
const inboxMissing = "`outbox-relay inbox migrate` to create it (or set OUTBOX_INBOX_TABLE)"

// cmdInbox parses `inbox migrate|prune`.
func cmdInbox(args []string) (action, error) {
	if len(args) == 0 {
		return nil, errors.New("inbox needs a command: migrate or prune (outbox-relay inbox -h for help)")
	}
	sub, args := args[0], args[1:]
	switch {
	case isHelp(sub):
		return nil, &helpRequest{inboxHelp}
	case sub == "migrate":
		return parseInboxMigrate(args)
	case sub == "prune":
		return parseInboxPrune(args)
	}
	return nil, fmt.Errorf("unknown command inbox %q (want migrate or prune; outbox-relay inbox -h for help)", sub)
}

func parseInboxMigrate(args []string) (action, error) {
	f := newFlags("inbox migrate", "inbox migrate [-print]",
		"Creates OUTBOX_INBOX_TABLE (consumer, message_id, received_at), its received_at index and its\n"+
			"claim function in the consumer's database. Idempotent, safe to run from every replica at once.")
	print := f.Bool("print", false, "print the SQL for OUTBOX_INBOX_TABLE instead of applying it (connects to nothing)")
	if err := f.parseNoArgs(args); err != nil {
		return nil, err
	}
	return func(ctx context.Context, e *env) error {
		if *print {
			printInboxSQL(e)
			return nil
		}
		conn, t, err := connect(ctx, e, e.cfg.inboxTable)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if err := inbox.Migrate(ctx, conn, t); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "inbox %s is ready\n", t)
		return nil
	}, nil
}

// printInboxSQL writes what `inbox migrate` applies: the schema, if the
// table names one, and inbox.MigrateSQL. An unqualified table is left so:
// psql creates it in the first schema of its search_path.
func printInboxSQL(e *env) {
	t := e.cfg.inboxTable
	if t.Schema != "" {
		fmt.Fprintf(e.stdout, "create schema if not exists %s;\n\n", pgx.Identifier{t.Schema}.Sanitize())
	}
	fmt.Fprint(e.stdout, inbox.MigrateSQL(t))
}

func parseInboxPrune(args []string) (action, error) {
	f := newFlags("inbox prune", "inbox prune -older-than D [-batch N]",
		"Deletes the claims of OUTBOX_INBOX_TABLE received more than D ago, oldest first, at most N\n"+
			"per transaction, while consumers keep claiming; prints how many it deleted. D must be longer\n"+
			"than any redelivery can take: a duplicate arriving after its claim was deleted is processed\n"+
			"again. Run it regularly (docs/inbox.md has a Kubernetes CronJob).")
	olderThan := f.duration("older-than", 0, "delete claims received more than `D` ago, e.g. 168h (required)")
	batch := f.Int("batch", inbox.PruneBatchDefault, "rows deleted per transaction")
	if err := f.parseNoArgs(args); err != nil {
		return nil, err
	}
	given := false
	f.Visit(func(fl *flag.Flag) { given = given || fl.Name == "older-than" })
	switch {
	case !given:
		return nil, errors.New("inbox prune needs -older-than D, e.g. -older-than 168h (outbox-relay inbox prune -h for help)")
	case *olderThan <= 0:
		return nil, fmt.Errorf("-older-than %s: want a positive duration, e.g. 168h", shortDuration(*olderThan))
	case *batch <= 0:
		return nil, fmt.Errorf("-batch %d: want a positive number of rows", *batch)
	}
	return func(ctx context.Context, e *env) error {
		return pruneInbox(ctx, e, *olderThan, *batch)
	}, nil
}

// pruneInbox deletes old claims and prints how many, also when it was
// interrupted (SIGTERM, a lost connection) after some batches.
func pruneInbox(ctx context.Context, e *env, olderThan time.Duration, batch int) error {
	conn, t, err := connectExisting(ctx, e, e.cfg.inboxTable, inboxMissing)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	n, err := inbox.Prune(ctx, conn, t, olderThan, batch)
	if err == nil || n > 0 {
		fmt.Fprintf(e.stdout, "pruned %d claim(s) older than %s from %s\n", n, shortDuration(olderThan), t)
	}
	return err
}
