package testenv

import (
	"time"

	"github.com/Shopify/toxiproxy/v2/stream"
	"github.com/Shopify/toxiproxy/v2/toxics"
)

// Freeze is the type of a toxic this package adds to toxiproxy: a proxy
// stopped (SIGSTOP) and resumed. While the toxic is on, the bytes of its
// stream are held, connections stay open and nothing is dropped; when it
// is removed, everything held goes on in order at once, and then a close
// by the client that came meanwhile. Toxiproxy's own toxics either drop
// what they hold (timeout) or delay every byte while they are on
// (latency).
//
// Unlike a stopped process's socket buffers, the hold is unbounded: the
// client's writes never block. Toxiproxy also interrupts a toxic when
// another toxic is added after it on the same stream, or one after it
// removed: the held bytes go on then, and the freeze holds again. A test
// freezes a stream with this toxic alone.
const Freeze = "freeze"

// freezeFlush bounds the wait of each held chunk for its destination once
// thawed, as toxiproxy's RemoveToxic bounds its own flush: a destination
// gone meanwhile reads nothing more.
const freezeFlush = 5 * time.Second

type freezeToxic struct{}

// Pipe holds every chunk until the toxic is interrupted, then passes them
// on in order.
func (*freezeToxic) Pipe(stub *toxics.ToxicStub) {
	var held []*stream.StreamChunk
	in := stub.Input
	for {
		select {
		case <-stub.Interrupt:
			for _, c := range held {
				if stub.WriteOutput(c, freezeFlush) != nil {
					break // the destination is gone: what is left goes nowhere
				}
			}
			return
		case c := <-in:
			if c == nil {
				// The client closed its side: what it sent is still
				// held. Toxiproxy passes the close on after the toxic
				// is removed, reading it from the closed input.
				in = nil
				continue
			}
			held = append(held, c)
		}
	}
}

func init() {
	toxics.Register(Freeze, new(freezeToxic))
}
