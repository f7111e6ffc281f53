package main

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/outbox-relay/outbox-relay/schema"
)

// The scale scenario's targets, at 3 relays: sharing a table reaches this
// much of the limit, after shareAdjusted, and no relay publishes more than
// maxShare of the rows.
const (
	scaleTargetRelays = 3
	scaleTargetRatio  = 0.85
	maxShare          = 0.40
)

// scaleRuns are the scale scenario's rounds: one relay, N relays on a table
// each (the limit), N relays sharing a table.
type scaleRuns struct {
	one, limit, shared []float64   // rows a second
	adjusted           []float64   // shared / limit, share-adjusted
	shares             [][]float64 // of the shared table's relays, largest first
	oneCPU, oneBackend []float64   // CPU s per 1,000 rows, the single relay's
	relayCPU           [][]float64 // CPU s per 1,000 of its rows, each shared relay's, by start order
	backendCPU         []float64   // CPU s per 1,000 rows, the shared relays' backends
}

func (s *scaleRuns) add(one, limit, shared scaleRun, rows int) {
	s.one, s.limit, s.shared = append(s.one, one.rate), append(s.limit, limit.rate), append(s.shared, shared.rate)
	shares := make([]float64, len(shared.published))
	var cpu []float64
	for i, p := range shared.published {
		shares[i] = p / float64(rows)
		cpu = append(cpu, perK(shared.relayCPU[i], int(p)))
	}
	s.adjusted = append(s.adjusted, shareAdjusted(shared.rate/limit.rate, shares))
	slices.Sort(shares)
	slices.Reverse(shares)
	s.shares = append(s.shares, shares)
	s.relayCPU = append(s.relayCPU, cpu)
	s.oneCPU = append(s.oneCPU, perK(one.relayCPU[0], rows))
	s.oneBackend = append(s.oneBackend, perK(one.backends, rows))
	s.backendCPU = append(s.backendCPU, perK(shared.backends, rows))
}

// shareAdjusted scales the ratio of N relays sharing a table to the limit
// by min(1, 1/(N × the largest share)): a drain that one relay carried
// more than its 1/N of does not show that N relays scale, however fast.
func shareAdjusted(ratio float64, shares []float64) float64 {
	if len(shares) == 0 {
		return ratio
	}
	largest := slices.Max(shares)
	return ratio * math.Min(1, 1/(float64(len(shares))*largest))
}

// formatShares writes shares as "0.34 0.33 0.33".
func formatShares(shares []float64) string {
	var s []string
	for _, v := range shares {
		s = append(s, fmt.Sprintf("%.2f", v))
	}
	return strings.Join(s, " ")
}

// column returns the i-th value of each round's.
func column(rounds [][]float64, i int) []float64 {
	var c []float64
	for _, r := range rounds {
		c = append(c, r[i])
	}
	return c
}

// report adds the rounds' figures to rep: n relays, a backlog of rows,
// capped as capped says.
func (s scaleRuns) report(rep *report, n, rows, rounds int, capped string) {
	p := schema.DefaultPartitions
	rep.add(fmt.Sprintf("scale: 1 relay %s, %d-row backlog, P=%d", capped, rows, p), fmt.Sprintf("%.0f rows/s", median(s.one)),
		fmt.Sprintf("median of %d rounds", rounds), "", "", true)
	lratio, leach := ratios(s.limit, s.one)
	rep.add(fmt.Sprintf("  %d relays, a table each of %d rows (the limit)", n, rows/n), fmt.Sprintf("%.0f rows/s", median(s.limit)),
		"1 relay, the same round", fmt.Sprintf("%.2f (rounds: %s)", lratio, leach), "", true)
	sratio, seach := ratios(s.shared, s.limit)
	rep.add(fmt.Sprintf("  %d relays sharing one table of %d rows", n, rows), fmt.Sprintf("%.0f rows/s", median(s.shared)),
		"a table each, the same round", fmt.Sprintf("%.2f (rounds: %s)", sratio, seach), "", true)

	var largest []float64
	var each []string
	for i, sh := range s.shares {
		largest = append(largest, sh[0])
		each = append(each, fmt.Sprintf("%.2f", s.adjusted[i]))
	}
	adjusted, maxLargest := median(s.adjusted), slices.Max(largest)
	target, shareTarget := "", ""
	if n == scaleTargetRelays {
		target, shareTarget = fmt.Sprintf(">= %.2f", scaleTargetRatio), fmt.Sprintf("<= %.2f each", maxShare)
	}
	rep.add(fmt.Sprintf("    share-adjusted: x min(1, 1/(%d x largest share))", n), fmt.Sprintf("largest share %.2f", median(largest)),
		"a table each, the same round", fmt.Sprintf("%.2f (rounds: %s)", adjusted, strings.Join(each, " ")),
		target, n != scaleTargetRelays || adjusted >= scaleTargetRatio)
	var med []float64
	var largestEach []string
	for i := range n {
		med = append(med, median(column(s.shares, i)))
	}
	for _, l := range largest {
		largestEach = append(largestEach, fmt.Sprintf("%.2f", l))
	}
	rep.add("    each relay's share of the rows, largest first", formatShares(med), fmt.Sprintf("even %.2f", 1/float64(n)),
		"largest, rounds: "+strings.Join(largestEach, " "), shareTarget, n != scaleTargetRelays || maxLargest <= maxShare)
	for i := range n {
		c := column(s.relayCPU, i)
		r, e := ratios(c, s.oneCPU)
		rep.add(fmt.Sprintf("    CPU s per 1,000 of its msgs, relay %d", i+1), fmt.Sprintf("%.3f", median(c)),
			fmt.Sprintf("1 relay %.3f", median(s.oneCPU)), fmt.Sprintf("%.2f (rounds: %s)", r, e), "", true)
	}
	r, e := ratios(s.backendCPU, s.oneBackend)
	rep.add("    CPU s per 1,000 msgs, PostgreSQL (the relays' backends)", fmt.Sprintf("%.3f", median(s.backendCPU)),
		fmt.Sprintf("1 relay's %.3f", median(s.oneBackend)), fmt.Sprintf("%.2f (rounds: %s)", r, e), "", true)
}
