package relay

import (
	"bytes"
	"errors"
	"net"
	"testing"
)

// writesConn records each Write call; after failAfter calls it fails.
type writesConn struct {
	net.Conn
	writes    [][]byte
	failAfter int
}

func (w *writesConn) Write(p []byte) (int, error) {
	if w.failAfter > 0 && len(w.writes) >= w.failAfter {
		return 0, errors.New("broken pipe")
	}
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), nil
}

func TestCorkConnHoldsABatchInOneWrite(t *testing.T) {
	w := &writesConn{}
	c := newCorkConn(w)
	if _, err := c.Write([]byte("a")); err != nil || len(w.writes) != 1 {
		t.Fatalf("uncorked write: err %v, %d writes, want it through at once", err, len(w.writes))
	}
	c.cork()
	for _, s := range []string{"b", "c", "d"} {
		if n, err := c.Write([]byte(s)); n != 1 || err != nil {
			t.Fatalf("corked write = %d, %v", n, err)
		}
	}
	if len(w.writes) != 1 {
		t.Fatalf("%d writes while corked, want none through", len(w.writes)-1)
	}
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	if len(w.writes) != 2 || string(w.writes[1]) != "bcd" {
		t.Fatalf("writes after uncork = %q, want one write of bcd", w.writes)
	}
	if err := c.uncork(); err != nil || len(w.writes) != 2 {
		t.Fatalf("second uncork: err %v, %d writes; want nothing written", err, len(w.writes))
	}
}

func TestCorkConnWritesPastTheLimit(t *testing.T) {
	w := &writesConn{}
	c := newCorkConn(w)
	c.cork()
	big := make([]byte, corkedLimit/2+1)
	c.Write(big)
	if len(w.writes) != 0 {
		t.Fatalf("wrote %d times under the limit", len(w.writes))
	}
	c.Write(big)
	if len(w.writes) != 1 || len(w.writes[0]) != len(big)*2 {
		t.Fatalf("writes past the limit: %d, want one of both", len(w.writes))
	}
}

func TestCorkConnFailsOnceTheSocketFailed(t *testing.T) {
	w := &writesConn{failAfter: 1}
	c := newCorkConn(w)
	c.Write([]byte("a"))
	c.cork()
	if _, err := c.Write([]byte("b")); err != nil {
		t.Fatalf("held write failed early: %v", err)
	}
	if err := c.uncork(); err == nil {
		t.Fatal("uncork onto a broken socket reported no error")
	}
	if _, err := c.Write([]byte("c")); err == nil {
		t.Fatal("a write after the failure went through")
	}
}
