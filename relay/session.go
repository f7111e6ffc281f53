package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Session settings. The relay depends on a few server settings of its own
// sessions: it holds a claim's transaction open while confirms arrive, so a
// database whose idle_in_transaction_session_timeout is shorter than that
// would kill every batch; a short statement_timeout or lock_timeout would
// fail claims on a large table. The relay sets them for its sessions, in
// one round trip right after connecting, so that the database's or role's
// defaults cannot starve it.
//
// They are set with SET rather than sent as startup parameters: PgBouncer
// refuses startup parameters it does not know (unless listed in its
// ignore_startup_parameters, and then it drops them silently), while a SET
// goes through to the server session, which a session-mode pool keeps for
// the client. A setting the database URL already names (as a parameter or
// in options=-c ...) is left as the URL has it.
type sessionSetting struct{ name, value string }

// lockTimeout bounds the relay's wait for a table lock (a migration, a
// manual LOCK): the statement fails and is retried rather than queueing the
// writers behind it.
const lockTimeout = 10 * time.Second

// sessionSettings returns the settings for the relay's sessions, given the
// runtime parameters the URL set, and the server's major version.
//
// No server-side bound on the relay's transactions: a claim's stays open
// while its batch's confirms arrive, which a slow or blocked broker (a
// resource alarm) can stretch for minutes; a server that killed it would
// make the relay publish the batch again, and drop its fence lock while the
// batch is on the wire. The relay bounds them itself (the confirm timeout),
// and a relay that hangs holds its leader lock anyway.
func sessionSettings(fromURL map[string]string, serverMajor int) []sessionSetting {
	// A relay that vanishes from the network must lose its leader lock
	// and row locks in bounded time: the server probes its sessions
	// instead of waiting for the kernel's two hours (see deadSession).
	all := append(deadSessionDefault.settings(), []sessionSetting{
		// The relay's own commits (deletes of published rows, failure
		// records) need not wait for the WAL flush: if the server crashes
		// before it, the rows come back and are published again, which
		// at-least-once allows. Not waiting spares the writers' commits the
		// relay's fsyncs.
		{"synchronous_commit", "off"},
		{"statement_timeout", ms(dbTimeout)},
		{"lock_timeout", ms(lockTimeout)},
		{"idle_in_transaction_session_timeout", "0"},
		// The LISTEN session idles between notifications, the pool's
		// sessions between batches: a server that ended idle sessions
		// would depose the leader again and again.
		{"idle_session_timeout", "0"},
		// The claim relies on read committed: each statement sees what
		// committed before it, and no serialization failure.
		{"default_transaction_isolation", "read committed"},
		// Every recurring query of the relay walks an index in order
		// (TestQueriesStayCheapBesideDeadAndDelayedRows), but the planner
		// may not know it, and chose otherwise twice in the benchmark
		// (TestClaimPlanWalksTheIndexWhateverTheEstimates):
		//  - a claim plan made while the table was vacuumed empty (0
		//    pages: a sequential scan costs nothing) stayed cached until
		//    the next ANALYZE; on a backlog of 20,000 rows it scanned the
		//    table, and again for every row's key check, until
		//    statement_timeout;
		//  - PostgreSQL cannot estimate available_at = created_at and,
		//    with a backlog analyzed, takes a handful of rows to match:
		//    a bitmap scan and a sort of them looked cheaper than the
		//    walk, and read and sorted a million rows per claim (2.4 s).
		// With sequential and bitmap scans off, a plan scans a table only
		// where no index serves (the one-row settings table).
		{"enable_seqscan", "off"},
		{"enable_bitmapscan", "off"},
		// A disabled scan counts as a huge cost (up to PostgreSQL 17),
		// which would make every such plan look worth compiling; and the
		// relay's statements are all short, where JIT only adds its
		// compile time (half a second per claim, measured).
		{"jit", "off"},
	}...)
	if serverMajor >= 17 {
		all = append(all, sessionSetting{"transaction_timeout", "0"})
	}
	var out []sessionSetting
	for _, s := range all {
		if !urlSets(fromURL, s.name) {
			out = append(out, s)
		}
	}
	return out
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// urlSets reports whether the URL's runtime parameters set name, directly
// or through options ("-c name=value" or "--name=value").
func urlSets(params map[string]string, name string) bool {
	if _, ok := params[name]; ok {
		return true
	}
	opts := params["options"]
	return strings.Contains(opts, "-c "+name+"=") || strings.Contains(opts, "-c"+name+"=") ||
		strings.Contains(opts, "--"+name+"=")
}

// applySessionSettings sets the relay's session settings on c in one round
// trip (simple protocol: no prepared statement). It runs only on sessions
// known to be the relay's own: behind a transaction-mode pooler, a SET would
// stay on a server connection that the pooler hands to the application
// next (synchronous_commit off for its commits, sequential and bitmap scans
// off for its queries), so the relay sets nothing until its listener has
// proved it has sessions of its own, and stops when it finds a pooler
// after all (see pgListener.checkSession, Relay.sessionsOwn and
// loop.listenerFailed).
func applySessionSettings(ctx context.Context, c *pgconn.PgConn, fromURL map[string]string) error {
	sql := setSQL(sessionSettings(fromURL, serverMajor(c)))
	if sql == "" {
		return nil
	}
	if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("apply session settings: %w", err)
	}
	return nil
}

// setSQL returns the SET statements of ss, in one string.
func setSQL(ss []sessionSetting) string {
	var b strings.Builder
	for _, s := range ss {
		// Names are constants above, values digits or words.
		fmt.Fprintf(&b, "set %s = '%s';", s.name, s.value)
	}
	return b.String()
}

// serverMajor is the server's major version as it reported it at startup,
// or 0 if unknown.
func serverMajor(c *pgconn.PgConn) int {
	v := c.ParameterStatus("server_version")
	if i := strings.IndexAny(v, ". "); i >= 0 {
		v = v[:i]
	}
	n, _ := strconv.Atoi(v)
	return n
}

// setupError is a reason the relay will not lead that reconnecting alone
// does not fix: it names the cause and what the operator should do. The
// relay keeps retrying (the server may be promoted, the URL fixed by a
// restart), logging it once per streak.
type setupError struct {
	kind  string // stable: "pooler", "read_only", "pool_wait"
	cause string
	fix   string
}

func (e *setupError) Error() string { return e.cause + "; " + e.fix }

// Kinds of setupError.
const (
	setupPooler   = "pooler"
	setupReadOnly = "read_only"
	setupPoolWait = "pool_wait"
)

const poolerFix = "point OUTBOX_DATABASE_URL at PostgreSQL itself or at a session-mode pool " +
	"(LISTEN and the leader's session advisory lock need a session of their own; writers may use any pooler)"

func poolerError(cause string) error {
	return &setupError{kind: setupPooler, cause: "the relay's database session is shared: " + cause, fix: poolerFix}
}

func poolWaitError(cause string) error {
	return &setupError{kind: setupPoolWait, cause: cause,
		fix: "if OUTBOX_DATABASE_URL points at a session-mode pool, make its pool large enough: " +
			"each relay holds up to 6 sessions (its LISTEN session and a pool of 5)"}
}

var errReadOnly = &setupError{kind: setupReadOnly,
	cause: "the database is read-only (a standby, or default_transaction_read_only is on): the relay will not lead",
	fix: "connect to the primary; with several hosts in OUTBOX_DATABASE_URL add target_session_attrs=read-write; " +
		"the relay retries and resumes once the server accepts writes"}

// SQLSTATEs the relay recognises: the hints below, and Arm's lock timeout.
const (
	sqlstateReadOnly          = "25006" // read_only_sql_transaction
	sqlstateDuplicatePrepared = "42P05" // duplicate_prepared_statement
	sqlstateUndefinedPrepared = "26000" // invalid_sql_statement_name
	sqlstateIdleInTxTimeout   = "25P03" // idle_in_transaction_session_timeout
	sqlstateLockNotAvailable  = "55P03" // lock_not_available: a lock_timeout passed
)

// withHint adds to a database error what the operator can do about it,
// where the cause is known: a read-only server, a transaction-mode pooler
// mixing up prepared statements, a session killed for idling in a
// transaction.
func withHint(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case sqlstateReadOnly:
		return fmt.Errorf("%w (hint: %s)", err, errReadOnly.fix)
	case sqlstateDuplicatePrepared, sqlstateUndefinedPrepared:
		return fmt.Errorf("%w (hint: a transaction-mode pooler hands the relay's sessions to others: %s)", err, poolerFix)
	case sqlstateIdleInTxTimeout:
		return fmt.Errorf("%w (hint: the server ended a claim's transaction while its confirms were awaited; "+
			"the relay sets idle_in_transaction_session_timeout for its sessions unless OUTBOX_DATABASE_URL sets it lower)", err)
	}
	return err
}

// probeSession returns the listener's probe (see checkSession): on a
// session of the pool, it reports that session's backend pid and sends
// payload on channel.
func probeSession(pool *pgxpool.Pool) func(ctx context.Context, channel, payload string) (int32, error) {
	return func(ctx context.Context, channel, payload string) (int32, error) {
		var pid int32
		err := pool.QueryRow(ctx, "select pg_backend_pid(), pg_notify($1, $2)", simple, channel, payload).Scan(&pid, nil)
		return pid, err
	}
}

// simpleQuerier runs QueryRow on the pool without prepared statements.
type simpleQuerier struct{ pool *pgxpool.Pool }

func (q simpleQuerier) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return q.pool.QueryRow(ctx, sql, append([]any{simple}, args...)...)
}

// Query runs Query on the pool without prepared statements.
func (q simpleQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return q.pool.Query(ctx, sql, append([]any{simple}, args...)...)
}
