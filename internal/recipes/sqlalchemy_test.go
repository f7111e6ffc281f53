package recipes_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// sqlalchemyDir holds the recipe's scripts (docs/sqlalchemy.md).
const sqlalchemyDir = "../../docs/recipes/sqlalchemy"

// leeway is how long a test waits, once the table is empty, for a message
// it does not expect: the relay deletes a row only after the broker
// confirmed it, so by then the message is in the queue or on its way to
// the consumer.
const leeway = 500 * time.Millisecond

// recipeEvent is one line a recipe script prints: an event it enqueued, in
// a transaction that committed or rolled back.
type recipeEvent struct {
	Driver    string `json:"driver"`
	Via       string `json:"via"`  // "orm" or "function"
	Kind      string `json:"kind"` // "bytea" or "jsonb"
	Order     string `json:"order"`
	MessageID string `json:"message_id"`
	Committed bool   `json:"committed"`
	Payload   []byte `json:"payload"` // what the script passed (base64 in JSON)
}

// sqlalchemyRun is one run of a recipe script.
type sqlalchemyRun struct {
	name   string // the driver, as the script reports it
	script string
	args   []string
}

// TestSQLAlchemyRecipe runs the recipe's services with each driver against
// a relay, and checks that what they commit arrives, exactly, and what they
// roll back does not, with their business changes.
func TestSQLAlchemyRecipe(t *testing.T) {
	testenv.RequirePython(t, "sqlalchemy:python3-sqlalchemy", "psycopg2:python3-psycopg2",
		"psycopg:python3-psycopg", "asyncpg:python3-asyncpg")
	e := testenv.New(t)
	ex := e.Exchange(t, "orders", "direct")
	deliveries := e.Consume(t, e.Queue(t, "orders", ex, "order.paid"))
	startRelay(t, e)
	e.WaitRelayIdle(t)

	for _, run := range []sqlalchemyRun{
		{"psycopg2", "sync_service.py", []string{"psycopg2"}},
		{"psycopg", "sync_service.py", []string{"psycopg"}},
		{"asyncpg", "async_service.py", nil},
	} {
		t.Run(run.name, func(t *testing.T) {
			evs, stderr, err := runRecipe(t, e, e.URL, run, ex)
			if err != nil {
				t.Fatalf("%s: %v\n%s", run.script, err, stderr)
			}
			checkDelivered(t, e, deliveries, run.name, ex, evs)
		})
	}

	// Through a transaction-mode PgBouncer (one server connection, so that
	// every run meets the statements the runs before it left there).
	// SQLAlchemy 1.4's asyncpg dialect prepares every statement under a
	// per-process counter name: the first run with the defaults works, the
	// next one collides with it. --pooler (no statement caches, UUID names)
	// runs again and again.
	t.Run("asyncpg_pgbouncer", func(t *testing.T) {
		b := testenv.StartPgBouncer(t, testenv.PgBouncerOptions{PoolMode: "transaction", PoolSize: 1})
		defaults := sqlalchemyRun{"asyncpg", "async_service.py", nil}
		pooler := sqlalchemyRun{"asyncpg", "async_service.py", []string{"--pooler"}}

		evs, stderr, err := runRecipe(t, e, b.URL, defaults, ex)
		if err != nil {
			t.Fatalf("first run with the defaults: %v\n%s", err, stderr)
		}
		checkDelivered(t, e, deliveries, "asyncpg", ex, evs)

		evs, stderr, err = runRecipe(t, e, b.URL, defaults, ex)
		if err == nil || !strings.Contains(stderr, "DuplicatePreparedStatementError") {
			t.Errorf("second run with the defaults: err %v, want a DuplicatePreparedStatementError\n%s", err, stderr)
		}
		if len(evs) != 0 {
			t.Errorf("second run with the defaults enqueued %d events, want it to fail on its first statement", len(evs))
		}
		checkDelivered(t, e, deliveries, "asyncpg", ex, nil)

		for i := 1; i <= 2; i++ {
			evs, stderr, err := runRecipe(t, e, b.URL, pooler, ex)
			if err != nil {
				t.Fatalf("run %d with --pooler: %v\n%s", i, err, stderr)
			}
			checkDelivered(t, e, deliveries, "asyncpg", ex, evs)
		}
	})
}

// runRecipe runs a recipe script with OUTBOX_DATABASE_URL set to dbURL and
// returns the events it printed, its stderr, and how it exited.
func runRecipe(t *testing.T, e *testenv.Env, dbURL string, run sqlalchemyRun, exchange string) ([]recipeEvent, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	script, err := filepath.Abs(filepath.Join(sqlalchemyDir, run.script))
	if err != nil {
		t.Fatal(err)
	}
	env := *e
	env.URL = dbURL
	args := slices.Concat([]string{e.Table.Schema + "." + e.Table.Name, exchange}, run.args)
	cmd := env.PythonCommand(ctx, script, args...)
	cmd.Env = append(cmd.Env, "PYTHONDONTWRITEBYTECODE=1") // no __pycache__ in docs/
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()

	var evs []recipeEvent
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var ev recipeEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("%s printed %q: %v", run.script, sc.Text(), err)
		}
		if ev.Driver != run.name {
			t.Errorf("%s reported driver %q, want %q", run.script, ev.Driver, run.name)
		}
		evs = append(evs, ev)
	}
	return evs, stderr.String(), runErr
}

// checkDelivered receives the committed events of evs from d and checks
// each against what the script wrote; then it waits for the table to be
// empty and for the leeway, and fails on any other message, a rolled-back
// event above all. It checks the business rows: an order for each
// committed event, none for a rolled-back one.
func checkDelivered(t *testing.T, e *testenv.Env, d <-chan amqp.Delivery, driver, exchange string, evs []recipeEvent) {
	t.Helper()
	committed := map[string]recipeEvent{}
	rolledBack := map[string]bool{}
	var kinds []string
	for _, ev := range evs {
		if ev.Committed {
			committed[ev.MessageID] = ev
			kinds = append(kinds, ev.Via+"/"+ev.Kind)
		} else {
			rolledBack[ev.MessageID] = true
		}
	}
	if evs != nil {
		slices.Sort(kinds)
		if want := []string{"function/bytea", "function/jsonb", "orm/bytea", "orm/jsonb"}; !slices.Equal(kinds, want) {
			t.Errorf("committed events %v, want %v", kinds, want)
		}
		if len(rolledBack) != 2 {
			t.Errorf("%d rolled-back events, want 2", len(rolledBack))
		}
	}

	msgs := testenv.Receive(t, d, len(committed), 10*time.Second)
	testenv.WaitFor(t, 10*time.Second, "the relay to empty the table", func() bool {
		live, _ := e.Pending(t)
		return live == 0
	})
	if _, dead := e.Pending(t); dead != 0 {
		t.Errorf("%d dead rows in the table, want none", dead)
	}
	late := time.After(leeway)
	for waiting := true; waiting; {
		select {
		case m := <-d:
			msgs = append(msgs, m)
		case <-late:
			waiting = false
		}
	}

	seen := map[string]bool{}
	for _, m := range msgs {
		ev, ok := committed[m.MessageId]
		switch {
		case rolledBack[m.MessageId]:
			t.Errorf("rolled-back event %s arrived: %q", m.MessageId, m.Body)
			continue
		case !ok:
			t.Errorf("unexpected message %s: %q", m.MessageId, m.Body)
			continue
		case seen[m.MessageId]:
			t.Errorf("message %s arrived twice", m.MessageId)
			continue
		}
		seen[m.MessageId] = true
		checkMessage(t, e, m, ev, driver, exchange)
	}

	checkOrders(t, e, evs)
}

// checkMessage compares one delivery with the event the script wrote.
func checkMessage(t *testing.T, e *testenv.Env, m amqp.Delivery, ev recipeEvent, driver, exchange string) {
	t.Helper()
	what := ev.Via + "/" + ev.Kind
	want, contentType := ev.Payload, "application/octet-stream"
	if ev.Kind == "jsonb" {
		contentType = "application/json"
	}
	if what == "function/jsonb" {
		// The jsonb overload sends PostgreSQL's rendering of the document.
		// The script's JSON is compact with unsorted keys: it differs, so
		// the text overload (which sends the text as is) would fail here.
		var pg string
		if err := e.Pool.QueryRow(context.Background(), "select $1::jsonb::text", string(ev.Payload)).Scan(&pg); err != nil {
			t.Fatal(err)
		}
		if pg == string(ev.Payload) {
			t.Fatalf("PostgreSQL renders %s unchanged: the test cannot tell the jsonb overload from text", ev.Payload)
		}
		want = []byte(pg)
	}
	if !bytes.Equal(m.Body, want) {
		t.Errorf("%s: body %q, want %q", what, m.Body, want)
	}
	if m.ContentType != contentType {
		t.Errorf("%s: content type %q, want %q", what, m.ContentType, contentType)
	}
	if m.Exchange != exchange || m.RoutingKey != "order.paid" {
		t.Errorf("%s: published to %q with key %q, want %q and order.paid", what, m.Exchange, m.RoutingKey, exchange)
	}
	if m.DeliveryMode != amqp.Persistent {
		t.Errorf("%s: delivery mode %d, want persistent", what, m.DeliveryMode)
	}
	if got := fmt.Sprint(m.Headers["driver"], "/", m.Headers["via"]); got != driver+"/"+ev.Via {
		t.Errorf("%s: headers driver/via %s, want %s/%s", what, got, driver, ev.Via)
	}
}

// checkOrders checks that the orders of the committed events exist and
// those of the rolled-back ones do not.
func checkOrders(t *testing.T, e *testenv.Env, evs []recipeEvent) {
	t.Helper()
	if len(evs) == 0 {
		return
	}
	var ids, want []string
	for _, ev := range evs {
		ids = append(ids, ev.Order)
		if ev.Committed {
			want = append(want, ev.Order)
		}
	}
	orders := pgx.Identifier{e.Table.Schema, "recipe_orders"}.Sanitize()
	rows, err := e.Pool.Query(context.Background(), "select id from "+orders+" where id = any($1) order by id", ids)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("orders %v, want those of the committed events only: %v", got, want)
	}
}
