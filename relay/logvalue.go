package relay

import (
	"log/slog"
	"strings"
)

// maxLogValue is the most bytes of a row's value (an exchange, a routing
// key) that a log line carries. A live row's are at most 255 bytes, but a
// row that breaks a limit (parked by the relay, or left from before
// migration 003) may hold 64 KiB or more in one, and the relay logs that
// row first of all.
const maxLogValue = 256

// rowAttr returns a log attribute holding v, a value taken from a row,
// clipped to maxLogValue bytes (see Clip). Every log line that shows a
// row's text goes through it.
func rowAttr(key, v string) slog.Attr { return slog.String(key, Clip(v, maxLogValue)) }

// Clip returns s when it is at most n bytes long (n > 3), else the longest
// start of s that fits n bytes with an ellipsis after it. A rune cut in two
// is dropped, so the result is valid UTF-8 when s is. For logs, errors and
// tables that show values of rows, which may be huge.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	return strings.ToValidUTF8(s[:n-len(ellipsis)], "") + ellipsis
}
