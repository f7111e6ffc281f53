package main

import "testing"

func TestParsePythonResult(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want pythonResult
		ok   bool
	}{
		{`{"events": 1000, "p50_ms": 1.5, "p95_ms": 2.25, "p99_ms": 3, "max_ms": 9.75}` + "\n",
			pythonResult{Events: 1000, P50: 1.5, P95: 2.25, P99: 3, Max: 9.75}, true},
		{"a warning\n" + `{"events": 2, "p50_ms": 1, "p95_ms": 1, "p99_ms": 1, "max_ms": 1}`,
			pythonResult{Events: 2, P50: 1, P95: 1, P99: 1, Max: 1}, true},
		{`{"events": 0}`, pythonResult{}, false},
		{"", pythonResult{}, false},
		{"Traceback ...", pythonResult{}, false},
	} {
		got, err := parsePythonResult([]byte(tt.in))
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("parsePythonResult(%q) = %+v, %v; want %+v, ok %t", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
