package relay

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

func TestClip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"at the limit", strings.Repeat("k", 256), strings.Repeat("k", 256)},
		{"one byte over", strings.Repeat("k", 257), strings.Repeat("k", 253) + "…"},
		{"two-byte runes, cut in one", strings.Repeat("é", 200), strings.Repeat("é", 126) + "…"},
		{"four-byte runes, cut in one", strings.Repeat("😀", 100), strings.Repeat("😀", 63) + "…"},
		{"multibyte at the limit", strings.Repeat("é", 128), strings.Repeat("é", 128)},
		{"64 KiB", strings.Repeat("x", 65536), strings.Repeat("x", 253) + "…"},
	} {
		got := Clip(tc.in, maxLogValue)
		if got != tc.want || len(got) > maxLogValue || !utf8.ValidString(got) {
			t.Errorf("%s: clip = %q (%d bytes), want %q", tc.name, got, len(got), tc.want)
		}
	}
}

// A failed row's values of 64 KiB take at most maxLogValue bytes each in
// the lines that report it.
func TestObserveClipsRowValues(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	l := &loop{Relay: &Relay{log: slog.New(slog.NewJSONHandler(&buf, nil)), metrics: newMetrics(prometheus.NewRegistry())}}
	long := strings.Repeat("é", 32768) // 64 KiB
	row := &Row{ID: 7, MessageID: "0194e9c4-1234-7abc-8def-0123456789ab", Exchange: long, RoutingKey: long}
	l.observe([]Result{{Row: row, Outcome: Failed, Reason: ReasonInvalid, Err: errors.New("routing_key is 65536 bytes")}},
		settled{dead: []int64{7}})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("logged %d lines, want 2 (publish failed, row parked dead):\n%s", len(lines), buf.String())
	}
	for _, line := range lines {
		// Two clipped values and some 400 bytes of the rest.
		if len(line) > 2*maxLogValue+400 || !utf8.ValidString(line) || !strings.Contains(line, `"routing_key":"`+Clip(long, maxLogValue)+`"`) {
			t.Errorf("line of %d bytes (valid UTF-8: %t): %.300s", len(line), utf8.ValidString(line), line)
		}
	}
}
