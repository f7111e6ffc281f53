package relay

import (
	"net"
	"sync"
)

// corkedLimit is how many bytes a corked connection holds before it
// writes them anyway.
const corkedLimit = 64 << 10

// corkConn is the broker connection's socket, which can hold writes back
// while a batch is published. amqp091-go flushes every message on its own:
// one write system call per message, which was half of the relay's CPU
// time in a drain. Corked (Send, for a whole batch), writes collect here
// and go out in one call when Send uncorks, or every corkedLimit bytes.
// Uncorked, writes go straight through.
//
// A write held back reports success; if the socket fails when the bytes
// go out, uncork returns the error and the messages are never confirmed,
// so their rows stay in the table and are sent again. Heartbeats and other
// frames written meanwhile wait for the uncork, a few milliseconds at most.
type corkConn struct {
	net.Conn
	mu     sync.Mutex // held while writing: frames never interleave
	corked bool
	held   []byte
	err    error // of a held write that went out and failed: every later write fails
}

func newCorkConn(c net.Conn) *corkConn { return &corkConn{Conn: c} }

// Write writes p, or holds it while corked.
func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if !c.corked {
		return c.Conn.Write(p)
	}
	c.held = append(c.held, p...)
	if len(c.held) >= corkedLimit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// cork holds writes back until uncork.
func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork writes what was held back, and lets later writes through.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *corkConn) flushLocked() error {
	if c.err != nil || len(c.held) == 0 {
		return c.err
	}
	_, err := c.Conn.Write(c.held)
	if len(c.held) > 4*corkedLimit {
		c.held = nil // a huge message: do not keep its buffer
	} else {
		c.held = c.held[:0]
	}
	c.err = err
	return err
}
