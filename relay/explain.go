package relay

import "github.com/outbox-relay/outbox-relay/schema"

// Query is one of the relay's recurring queries with example arguments, so
// that tests and the benchmark can EXPLAIN exactly what the relay runs.
type Query struct {
	Name string
	SQL  string
	Args []any
}

// Queries returns the claim, the settle statements and the gauge queries
// the relay runs on table t.
func Queries(t schema.Table, batchSize, maxAttempts int) []Query {
	s := newStore(nil, t, maxAttempts, nil)
	g := newGaugeQueries(t)
	claimArgs := s.claimArgs(batchSize, BatchBytesDefault, MaxMessageSizeDefault)
	claimArgs[3] = []int64{1, 2, 3} // the rows of a batch on the wire
	return []Query{
		{"promote due rows", s.promoteSQL, []any{batchSize}},
		{"claim", s.claimSQL, claimArgs},
		{"delete acked", s.deleteSQL, []any{[]int64{1, 2, 3}}},
		{"record failure", s.failSQL, []any{[]int64{1}, []string{"example"}, []int64{1000}, maxAttempts, []bool{false}}},
		{"gauges", g.gauges, nil},
		{"gauge: pending span", g.pendingSpan, nil},
		{"stall check", g.stall, []any{0, 0}},
	}
}

// SessionSettingsSQL returns the SET statements the relay runs on its own
// sessions (see sessionSettings; as for PostgreSQL 15), so that the tests
// and the benchmark plan Queries as the relay's sessions do: the planner
// settings among them decide the claim's plan.
func SessionSettingsSQL() string { return setSQL(sessionSettings(nil, 15)) }
