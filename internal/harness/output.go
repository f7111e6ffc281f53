package harness

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Output is what a process wrote to stdout and stderr, kept whole. It is
// safe for concurrent use: the process writes while a test reads.
type Output struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	copy lineCopier // to Relay.Output, if set
}

func newOutput(to io.Writer, prefix string) *Output {
	return &Output{copy: lineCopier{to: to, prefix: prefix}}
}

// Write appends p, and copies each line it completes to Relay.Output. It
// never fails. A test may write too, e.g. a stack dump taken with gdb.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	_, _ = o.copy.Write(p)
	return len(p), nil
}

// flush completes a last line without a newline, once the process has
// exited.
func (o *Output) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.copy.flush()
}

// String returns everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// Lines returns the complete lines written so far, without their newlines.
func (o *Output) Lines() []string {
	s := o.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return strings.Split(s[:i], "\n")
	}
	return nil
}

// Count returns how many lines contain s.
func (o *Output) Count(s string) int {
	n := 0
	for _, line := range o.Lines() {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// Grep returns the lines that contain any of subs, at most max of them and
// then a line saying how many more there were, joined by newlines.
func (o *Output) Grep(max int, subs ...string) string {
	var out []string
	for _, line := range o.Lines() {
		for _, s := range subs {
			if strings.Contains(line, s) {
				out = append(out, line)
				break
			}
		}
	}
	if len(out) > max {
		out = append(out[:max], fmt.Sprintf("... (%d more)", len(out)-max))
	}
	return strings.Join(out, "\n")
}

// FirstLineTime returns the time stamp of the first line that contains
// sub; false if there is none, or it has no time stamp. It reads the
// relay's text log (OUTBOX_LOG_FORMAT=text), whose lines begin with a time
// stamp in time.StampMilli, in local time and without the year: the
// current year is assumed.
func (o *Output) FirstLineTime(sub string) (time.Time, bool) {
	for _, line := range o.Lines() {
		if !strings.Contains(line, sub) {
			continue
		}
		if len(line) < len(time.StampMilli) {
			return time.Time{}, false
		}
		ts, err := time.ParseInLocation(time.StampMilli, line[:len(time.StampMilli)], time.Local)
		if err != nil {
			return time.Time{}, false
		}
		return ts.AddDate(time.Now().Year(), 0, 0), true
	}
	return time.Time{}, false
}

// lineCopier writes what it is given to another writer one whole line per
// Write call, after prefix. It is not safe for concurrent use.
type lineCopier struct {
	to      io.Writer // nil: copy nothing
	prefix  string
	partial []byte // the start of a line not yet complete
}

func (c *lineCopier) Write(p []byte) (int, error) {
	if c.to == nil {
		return len(p), nil
	}
	c.partial = append(c.partial, p...)
	rest := c.partial
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		c.write(rest[:i+1])
		rest = rest[i+1:]
	}
	c.partial = append(c.partial[:0], rest...)
	return len(p), nil
}

// flush completes and writes a last line without a newline.
func (c *lineCopier) flush() {
	if c.to == nil || len(c.partial) == 0 {
		return
	}
	c.write(append(c.partial, '\n'))
	c.partial = c.partial[:0]
}

// write writes one line, after the prefix.
func (c *lineCopier) write(line []byte) {
	if c.prefix != "" {
		line = append([]byte(c.prefix), line...)
	}
	_, _ = c.to.Write(line)
}
