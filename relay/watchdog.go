package relay

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// watchdog bounds the wait for confirms while batches are in flight: when
// messages are outstanding and no confirm has come for the confirm timeout
// (time the broker spends blocked by a resource alarm does not count), or
// when ctx is done, it breaks the TCP connection under the client. That ends
// even a write stalled on a hung broker; unconfirmed rows then count as not
// sent.
type watchdog struct {
	timeout     time.Duration
	outstanding atomic.Int64
	last        atomic.Int64 // unix nanoseconds of the last progress
	done        chan struct{}
	killed      chan struct{}
	wg          sync.WaitGroup
	reason      error // set before killed is closed
}

// Watch starts the watchdog for the batches sent until stop, which stops
// it and waits for it. Send and Await use it.
func (p *amqpPublisher) Watch(ctx context.Context) (stop func()) {
	w := &watchdog{timeout: p.confirmTimeout, done: make(chan struct{}), killed: make(chan struct{})}
	w.touch()
	p.wd = w
	nc := p.netConn
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tick := time.NewTicker(min(w.timeout/10, 100*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-w.done:
				return
			case <-tick.C:
				if p.blocked.Load() || w.outstanding.Load() <= 0 {
					w.touch()
					continue
				}
				if time.Since(time.Unix(0, w.last.Load())) < w.timeout {
					continue
				}
				w.reason = fmt.Errorf("no confirms within %s", w.timeout)
			case <-ctx.Done():
				w.reason = fmt.Errorf("batch abandoned: %w", context.Cause(ctx))
			}
			close(w.killed)
			if nc != nil {
				_ = nc.Close()
			}
			return
		}
	}()
	return w.stop
}

func (w *watchdog) touch()     { w.last.Store(time.Now().UnixNano()) }
func (w *watchdog) sent()      { w.outstanding.Add(1) }
func (w *watchdog) confirmed() { w.outstanding.Add(-1); w.touch() }

// wait waits for dc and reports whether it resolved (false: the watchdog
// broke the connection first).
func (w *watchdog) wait(dc *amqp.DeferredConfirmation) bool {
	select {
	case <-dc.Done():
		w.confirmed()
		return true
	case <-w.killed:
		return false
	}
}

// killedBy returns why the watchdog broke the connection, if it did.
func (w *watchdog) killedBy() error {
	select {
	case <-w.killed:
		return w.reason
	default:
		return nil
	}
}

// stop stops the watchdog and waits for it.
func (w *watchdog) stop() {
	close(w.done)
	w.wg.Wait()
}
