package testenv

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestFreezeHoldsThenReleasesInOrder proxies to a local echo server,
// freezes the client's stream, writes, and checks that nothing arrives
// while frozen and that everything arrives, in order, once thawed.
func TestFreezeHoldsThenReleasesInOrder(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	p := startProxy(t, "echo", ln.Addr().String())
	c, err := net.Dial("tcp", p.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)

	fmt.Fprintln(c, "before")
	if line, err := r.ReadString('\n'); err != nil || line != "before\n" {
		t.Fatalf("before the freeze: read %q, %v", line, err)
	}

	js := fmt.Sprintf(`{"name": "f", "type": %q, "stream": "upstream", "toxicity": 1, "attributes": {}}`, Freeze)
	if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		t.Fatalf("add the freeze: %v", err)
	}
	var want strings.Builder
	for i := range 100 {
		fmt.Fprintf(c, "line %d\n", i)
		fmt.Fprintf(&want, "line %d\n", i)
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if b, err := r.ReadByte(); err == nil {
		t.Fatalf("read %q while frozen", b)
	}
	if err := p.Toxics.RemoveToxic(context.Background(), "f"); err != nil {
		t.Fatalf("remove the freeze: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("after the thaw: read %q: %v", got, err)
	}
	if string(got) != want.String() {
		t.Fatalf("after the thaw: read %q, want %q", got, want.String())
	}
}
