package main

import (
	"math"
	"testing"
)

func TestCFSQuota(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		cores float64
		want  int
		ok    bool
	}{
		{0.05, 5000, true},
		{0.5, 50_000, true},
		{1.5, 150_000, true},
		{0.01, 1000, true},
		{0.005, 0, false}, // 500us: below the kernel's minimum
		{0, 0, false},
		{-1, 0, false},
		{math.NaN(), 0, false},
		{math.Inf(1), 0, false},
	} {
		got, err := cfsQuota(tt.cores, cfsPeriod)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("cfsQuota(%g) = %d, %v; want %d, ok %t", tt.cores, got, err, tt.want, tt.ok)
		}
	}
}

func TestShareAdjusted(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		ratio  float64
		shares []float64
		want   float64
	}{
		{"even shares keep the ratio", 0.9, []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}, 0.9},
		{"below 1/N cannot raise it", 0.9, []float64{0.3, 0.3, 0.3}, 0.9},
		{"a relay with 40% of 3", 0.9, []float64{0.4, 0.3, 0.3}, 0.9 / 1.2},
		{"one relay did it all", 0.9, []float64{1, 0, 0}, 0.3},
		{"one relay", 0.8, []float64{1}, 0.8},
		{"no shares", 0.8, nil, 0.8},
	} {
		if got := shareAdjusted(tt.ratio, tt.shares); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%s: shareAdjusted(%g, %v) = %g, want %g", tt.name, tt.ratio, tt.shares, got, tt.want)
		}
	}
}
