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

	toxiproxy "github.com/Shopify/toxiproxy/v2"
)

// echoProxy starts an echo server and a proxy to it, and returns the proxy
// and a connection through it.
func echoProxy(t *testing.T) (*toxiproxy.Proxy, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
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
	t.Cleanup(func() { c.Close() })
	return p, c
}

func freezeUpstream(t *testing.T, p *toxiproxy.Proxy) {
	t.Helper()
	js := fmt.Sprintf(`{"name": "f", "type": %q, "stream": "upstream", "toxicity": 1, "attributes": {}}`, Freeze)
	if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		t.Fatalf("add the freeze: %v", err)
	}
}

func thawUpstream(t *testing.T, p *toxiproxy.Proxy) {
	t.Helper()
	if err := p.Toxics.RemoveToxic(context.Background(), "f"); err != nil {
		t.Fatalf("remove the freeze: %v", err)
	}
}

// writeLines writes n numbered lines to c and returns them.
func writeLines(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// quietFor checks that nothing arrives on c (read through r) for d.
func quietFor(t *testing.T, c net.Conn, r *bufio.Reader, d time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	if b, err := r.ReadByte(); err == nil {
		t.Fatalf("read %q while frozen", b)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
}

// TestFreezeHoldsThenReleasesInOrder proxies to an echo server, freezes
// the client's stream, writes, and checks that nothing arrives while
// frozen and that everything arrives, in order, once thawed.
func TestFreezeHoldsThenReleasesInOrder(t *testing.T) {
	p, c := echoProxy(t)
	r := bufio.NewReader(c)
	fmt.Fprintln(c, "before")
	if line, err := r.ReadString('\n'); err != nil || line != "before\n" {
		t.Fatalf("before the freeze: read %q, %v", line, err)
	}

	freezeUpstream(t, p)
	want := writeLines(t, c, 100)
	quietFor(t, c, r, 300*time.Millisecond)
	thawUpstream(t, p)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil || string(got) != want {
		t.Fatalf("after the thaw: read %q, %v; want %q", got, err, want)
	}
}

// TestFreezeHoldsAClose: a client that writes and closes while frozen
// has its bytes delivered, then its close, once thawed.
func TestFreezeHoldsAClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c) // until the client's close
		received <- string(b)
	}()
	p := startProxy(t, "sink", ln.Addr().String())
	c, err := net.Dial("tcp", p.Listen)
	if err != nil {
		t.Fatal(err)
	}
	freezeUpstream(t, p)
	want := writeLines(t, c, 10)
	c.Close()
	select {
	case got := <-received:
		t.Fatalf("the server saw the close while frozen, after %q", got)
	case <-time.After(300 * time.Millisecond):
	}
	thawUpstream(t, p)
	select {
	case got := <-received:
		if got != want {
			t.Fatalf("after the thaw the server read %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("after the thaw the server saw no close")
	}
}
