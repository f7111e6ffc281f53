package main

import (
	"bytes"
	"fmt"
	"io"
	"sync"
)

// printer writes the demo's output: whole lines, each prefixed with the
// component that speaks, from any goroutine.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

// newPrinter returns a printer writing to w.
func newPrinter(w io.Writer) *printer { return &printer{w: w} }

// printf prints one line for component who. A write error is ignored: there
// is nowhere left to report it.
func (p *printer) printf(who, format string, args ...any) {
	line := fmt.Sprintf("%-8s %s\n", "["+who+"]", fmt.Sprintf(format, args...))
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = io.WriteString(p.w, line)
}

// lineWriter turns a subprocess's output into printer lines for who. Call
// flush once the writes are over.
type lineWriter struct {
	p   *printer
	who string
	mu  sync.Mutex // os/exec writes from its own goroutine; flush comes from ours
	buf []byte
}

// lineWriter returns a writer whose lines p prints for who.
func (p *printer) lineWriter(who string) *lineWriter { return &lineWriter{p: p, who: who} }

// Write prints the complete lines in b and keeps the rest for later.
func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) == 0 {
		w.buf = nil // let the backing array go
	}
	return len(b), nil
}

// flush prints what is left of a last line without a newline.
func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(w.buf)
		w.buf = nil
	}
}

// emit prints one line, without a trailing carriage return; it skips
// empty lines. The caller holds w.mu.
func (w *lineWriter) emit(line []byte) {
	line = bytes.TrimRight(line, "\r")
	if len(line) > 0 {
		w.p.printf(w.who, "%s", line)
	}
}
