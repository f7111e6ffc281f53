package harness

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// lineRecorder records each Write call.
type lineRecorder struct{ writes []string }

func (l *lineRecorder) Write(p []byte) (int, error) {
	l.writes = append(l.writes, string(p))
	return len(p), nil
}

func TestOutputCopiesWholeLines(t *testing.T) {
	t.Parallel()
	rec := &lineRecorder{}
	o := newOutput(rec, "[relay] ")
	for _, chunk := range []string{"first ", "line\nsecond line\nthi", "rd", " line\nno newline"} {
		fmt.Fprint(o, chunk)
	}
	o.flush()
	want := []string{"[relay] first line\n", "[relay] second line\n", "[relay] third line\n", "[relay] no newline\n"}
	if strings.Join(rec.writes, "|") != strings.Join(want, "|") {
		t.Errorf("Output copied %q; want %q", rec.writes, want)
	}
	if got := o.String(); got != "first line\nsecond line\nthird line\nno newline" {
		t.Errorf("String() = %q", got)
	}
}

func TestOutputSearch(t *testing.T) {
	t.Parallel()
	stamp := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	o := newOutput(nil, "")
	fmt.Fprintf(o, "%s INF relay started\n", stamp.Add(-time.Second).Format(time.StampMilli))
	fmt.Fprintf(o, "%s WRN leadership lost reason=lock\n", stamp.Format(time.StampMilli))
	fmt.Fprintf(o, "%s INF row parked dead id=1\n", stamp.Format(time.StampMilli))
	fmt.Fprintf(o, "%s INF row parked dead id=2\n", stamp.Format(time.StampMilli))
	fmt.Fprint(o, "partial row parked dead")

	if n := o.Count("row parked dead"); n != 2 {
		t.Errorf("Count = %d; want 2 (a partial line does not count)", n)
	}
	if got := o.Grep(1, "parked", "leadership"); !strings.Contains(got, "leadership lost") || !strings.HasSuffix(got, "... (2 more)") {
		t.Errorf("Grep(1) = %q", got)
	}
	at, ok := o.FirstLineTime("leadership lost")
	if !ok || !at.Equal(stamp) {
		t.Errorf("FirstLineTime = %s, %t; want %s", at, ok, stamp)
	}
	if _, ok := o.FirstLineTime("absent"); ok {
		t.Error("FirstLineTime found a line that is not there")
	}
}
