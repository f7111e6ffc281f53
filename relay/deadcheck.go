package relay

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/schema"
)

// revived is what RetryDead sets in a row it revives. Both the UPDATE and
// the rows the checks are tried on (see breaking) are built from it, so
// they cannot disagree. available_at = created_at puts the row straight
// into claim_idx (see claimQuery), so the claim woken by RetryDead's
// NOTIFY takes it without waiting for a promotion (see promoteEvery).
var revived = []struct{ column, value string }{
	{"dead_at", "null"},
	{"attempts", "0"},
	{"available_at", "created_at"},
}

// revivedSet returns revived as the SET list of an UPDATE.
func revivedSet() string {
	set := make([]string, len(revived))
	for i, c := range revived {
		set[i] = c.column + " = " + c.value
	}
	return strings.Join(set, ", ")
}

// revivedJSON returns revived as a jsonb object for jsonb_populate_record.
func revivedJSON() string {
	kv := make([]string, 0, 2*len(revived))
	for _, c := range revived {
		kv = append(kv, "'"+c.column+"'", c.value)
	}
	return "jsonb_build_object(" + strings.Join(kv, ", ") + ")"
}

// check is one of a table's check constraints.
type check struct {
	name    string
	expr    string // its condition, as PostgreSQL prints it
	comment string // what a row that breaks it has wrong, in words; may be empty
}

// reason says what a row that breaks c has wrong: c's comment (migration
// 003 gives its checks one), else its condition.
func (c check) reason() string {
	if c.comment != "" {
		return c.comment
	}
	return "breaks " + c.expr
}

// expiredCheck is not a check of the table but is tried like one: a row
// whose expiration ran out (migration 005) would be parked dead again, with
// reason expired, at its next claim. RetryDead leaves it dead and says so.
var expiredCheck = check{
	name:    "expired",
	expr:    "expiration is null or created_at + expiration > now()",
	comment: "its expiration ran out: it would be parked dead again at once",
}

// tableChecks returns the check constraints of table t, by name.
func tableChecks(ctx context.Context, q Querier, t schema.Table) ([]check, error) {
	rows, err := q.Query(ctx, `select conname::text, pg_get_expr(conbin, conrelid), coalesce(obj_description(oid, 'pg_constraint'), '')
  from pg_constraint
 where conrelid = $1::regclass and contype = 'c'
 order by conname`, t.Ident())
	if err != nil {
		return nil, fmt.Errorf("read checks of %s: %w", t, err)
	}
	checks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (check, error) {
		var c check
		err := r.Scan(&c.name, &c.expr, &c.comment)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read checks of %s: %w", t, err)
	}
	return checks, nil
}

// breaking returns the dead rows f selects that a check of table t would
// refuse once revived, by check, and all their ids. It locks every row f
// selects, so that what it found still holds for the UPDATE in tx.
//
// The checks are not restated here: they are read from the catalog and
// each is evaluated, as PostgreSQL will evaluate it on the UPDATE, over
// each row as RetryDead would leave it (jsonb_populate_record: the row with
// the revived columns replaced). Dead rows are exempt from migration 003's
// size checks, so a row parked by migration 004 breaks one once revived;
// so would any check added later. A check fails when its condition is
// false; null passes.
//
// The conditions are pasted into the query as PostgreSQL printed them
// (pg_get_expr): SQL over the table's own columns, written by whoever may
// alter the table. No value from the caller goes in as text.
func breaking(ctx context.Context, tx pgx.Tx, t schema.Table, f DeadFilter) ([]Skipped, []int64, error) {
	checks, err := tableChecks(ctx, tx, t)
	if err != nil {
		return nil, nil, err
	}
	var props bool
	if err := tx.QueryRow(ctx, propertiesSQL, t.Ident()).Scan(&props); err != nil {
		return nil, nil, fmt.Errorf("check for property columns: %w", err)
	}
	if props {
		checks = append(checks, expiredCheck)
	}
	if len(checks) == 0 {
		return nil, nil, nil
	}
	cond, args, err := f.where("o.")
	if err != nil {
		return nil, nil, err
	}
	which := make([]string, len(checks))
	fails := make([]string, len(checks))
	for i, c := range checks {
		which[i] = fmt.Sprintf("case when (%s) is false then %d end", c.expr, i)
		fails[i] = "(" + c.expr + ") is false"
	}
	// The conditions name columns unqualified: the outer query sees only
	// the revived rows, under the table's own name.
	rows, err := tx.Query(ctx, `select id, array_remove(array[`+strings.Join(which, ", ")+`], null)
  from (select r.*
          from `+t.Ident()+` o
         cross join lateral jsonb_populate_record(o, `+revivedJSON()+`) r
         where `+cond+`
           for update of o) as `+pgx.Identifier{t.Name}.Sanitize()+`
 where `+strings.Join(fails, " or ")+`
 order by id`, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("find rows that break a check: %w", err)
	}
	byCheck := make([][]int64, len(checks))
	var ids []int64
	var id int64
	var broken []int32
	_, err = pgx.ForEachRow(rows, []any{&id, &broken}, func() error {
		ids = append(ids, id)
		for _, i := range broken {
			byCheck[i] = append(byCheck[i], id)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("find rows that break a check: %w", err)
	}
	var skipped []Skipped
	for i, c := range checks {
		if len(byCheck[i]) > 0 {
			skipped = append(skipped, Skipped{Check: c.name, Reason: c.reason(), IDs: byCheck[i]})
		}
	}
	return skipped, ids, nil
}
