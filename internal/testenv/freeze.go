package testenv

import (
	"time"

	"github.com/Shopify/toxiproxy/v2/stream"
	"github.com/Shopify/toxiproxy/v2/toxics"
)

// Freeze is the type of a toxic this package adds to toxiproxy: a proxy
// stopped (SIGSTOP) and resumed. While the toxic is on, the bytes of its
// stream are held, connections stay open and nothing is dropped; when it
// is removed, everything held goes on in order at once, even for a
// connection its client closed meanwhile. Toxiproxy's own toxics either
// drop what they hold (timeout) or delay every byte while they are on
// (latency).
const Freeze = "freeze"

type freezeToxic struct{}

// Pipe holds every chunk until the toxic is interrupted (removed or
// replaced), then passes them on in order.
func (*freezeToxic) Pipe(stub *toxics.ToxicStub) {
	var held []*stream.StreamChunk
	in := stub.Input
	for {
		select {
		case <-stub.Interrupt:
			for _, c := range held {
				// A destination gone meanwhile (its side closed) reads
				// nothing more: what is left goes nowhere, as it would.
				if stub.WriteOutput(c, time.Second) != nil {
					break
				}
			}
			return
		case c := <-in:
			if c == nil {
				// The client closed its side: what it sent is still
				// held, as in a stopped proxy's socket buffers. The
				// close goes on after it, once the toxic is removed.
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
