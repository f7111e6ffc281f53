package main

import (
	"slices"
	"testing"
)

func TestParseRates(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want []int
		ok   bool
	}{
		{"10,50,200,1000,5000", []int{10, 50, 200, 1000, 5000}, true},
		{" 10 , 50,", []int{10, 50}, true},
		{"", nil, true},
		{"10,x", nil, false},
		{"0", nil, false},
		{"-5", nil, false},
	} {
		got, err := parseRates(tt.in)
		if (err == nil) != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("parseRates(%q) = %v, %v; want %v, ok %t", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestRateWriters(t *testing.T) {
	t.Parallel()
	for rate, want := range map[int]int{10: 8, 1000: 8, 2000: 13, 5000: 32, 100000: 32} {
		if got := rateWriters(rate); got != want {
			t.Errorf("rateWriters(%d) = %d, want %d", rate, got, want)
		}
	}
}
