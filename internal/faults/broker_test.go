//go:build faults

package faults

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/harness"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

const (
	// faultSpacing is the load run between two faults.
	faultSpacing = 1500 * time.Millisecond
	// brokerOutage is how long the broker application stays stopped.
	brokerOutage = 2 * time.Second
	// alarmSettle is how long, once the relay says the broker blocked it,
	// messages published before the alarm may still take to reach the
	// consumer.
	alarmSettle = time.Second
	// alarmHold is how long the alarm then lasts, under load.
	alarmHold = 4 * time.Second
	// watermarkDefault is the broker's memory watermark when a test cannot
	// read the one in force.
	watermarkDefault = "0.4"
	// watermarkAlarm is a memory watermark below any broker's use: it raises
	// the memory alarm at once.
	watermarkAlarm = "0.0000001"
)

// brokerConnections returns the broker's ids (pid column) of p's AMQP
// connections, found by their peer ports.
func brokerConnections(t *testing.T, p *relayProc) []string {
	t.Helper()
	ports, err := p.LocalPorts(amqpPort(t))
	if err != nil {
		t.Fatal(err)
	}
	conns, err := harness.BrokerConnections(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, c := range conns {
		if slices.Contains(ports, c.PeerPort) {
			pids = append(pids, c.PID)
		}
	}
	return pids
}

// TestBrokerClosesRelayConnection has the broker close the relay's AMQP
// connection (rabbitmqctl close_connection) four times under load.
func TestBrokerClosesRelayConnection(t *testing.T) {
	ctx := context.Background()
	s := newScenario(t, "broker_close_connection")
	s.startLoad()
	r := s.startRelay(nil)
	s.waitFlowing("relay")
	const closes = 4
	for i := range closes {
		time.Sleep(faultSpacing) // spaces the faults
		s.backlog(burst)
		var pids []string
		s.waitFor(10*time.Second, "the relay's broker connection (after the previous close, a reconnect)", func() bool {
			pids = brokerConnections(t, r)
			return len(pids) > 0
		})
		closed, from := time.Now(), s.cons.mark()
		for _, pid := range pids {
			must(t, harness.CloseBrokerConnection(ctx, pid, "fault injection: broker-side close"))
		}
		s.recovered(fmt.Sprintf("broker closed the relay's connection (%d)", i+1), closed, from)
	}
	// The last close may still be under way.
	var n float64
	if !harness.Within(10*time.Second, func() bool {
		n, _ = r.Metric(`outbox_reconnects_total{connection="amqp"}`)
		return n >= closes
	}) {
		t.Errorf("outbox_reconnects_total{connection=\"amqp\"} = %v after %d closes", n, closes)
	}
	s.finish(0)
}

// TestBrokerRestart stops the broker application under load, keeps it down
// for brokerOutage, and starts it again, twice. The queue is durable and
// the messages persistent: nothing confirmed may vanish with the restart.
func TestBrokerRestart(t *testing.T) {
	ctx := context.Background()
	s := newScenario(t, "broker_restart")
	// Registered after the topology, so it runs before its removal.
	t.Cleanup(func() {
		if err := harness.StartBroker(context.Background()); err != nil {
			t.Errorf("restore broker: %v", err)
		}
	})
	s.startLoad()
	r := s.startRelay(nil)
	s.waitFlowing("relay")
	for i := range 2 {
		time.Sleep(faultSpacing) // spaces the faults
		s.backlog(burst)
		stopped := time.Now()
		must(t, harness.StopBroker(ctx))
		time.Sleep(brokerOutage) // the outage
		must(t, harness.StartBroker(ctx))
		back, from := time.Now(), s.cons.mark()
		t.Logf("restart %d: broker down %s", i+1, back.Sub(stopped).Round(time.Millisecond))
		s.recovered(fmt.Sprintf("broker restart %d", i+1), back, from)
	}
	if n, _ := r.Metric(`outbox_reconnects_total{connection="amqp"}`); n < 2 {
		t.Errorf("outbox_reconnects_total{connection=\"amqp\"} = %v after 2 restarts", n)
	}
	s.finish(0)
}

// TestBrokerMemoryAlarm raises the broker's memory alarm under load: the
// relay must pause (and say so) while publishing is blocked, and deliver
// everything once the alarm clears.
func TestBrokerMemoryAlarm(t *testing.T) {
	s := newScenario(t, "broker_memory_alarm")
	ctx := context.Background()
	prev, err := harness.MemoryWatermark(ctx)
	must(t, err)
	if _, err := strconv.ParseFloat(prev, 64); err != nil {
		t.Logf("memory watermark %q is not a fraction; restoring %s afterwards", prev, watermarkDefault)
		prev = watermarkDefault
	}
	t.Cleanup(func() {
		if err := harness.SetMemoryWatermark(ctx, prev); err != nil {
			t.Errorf("restore memory watermark: %v", err)
		}
		if !harness.Within(30*time.Second, func() bool {
			out, err := harness.BrokerAlarms(ctx)
			return err == nil && out == "[]"
		}) {
			t.Errorf("broker alarm still raised 30s after restoring the watermark")
		}
	})
	s.startLoad()
	r := s.startRelay(nil)
	s.waitFlowing("relay")
	time.Sleep(faultSpacing) // load before the fault

	raised := time.Now()
	must(t, harness.SetMemoryWatermark(ctx, watermarkAlarm))
	blockedAt := harness.WaitFor(t, 15*time.Second, "the relay to log that the broker blocked publishing", func() bool {
		return r.Output().Count("broker blocked publishing") > 0
	})
	t.Logf("relay paused %s after the alarm was raised", blockedAt.Sub(raised).Round(time.Millisecond))
	time.Sleep(alarmSettle)
	from, written := s.cons.mark(), s.prod.count()
	time.Sleep(alarmHold) // the alarm lasts, under load
	arrived, written := s.cons.mark()-from, s.prod.count()-written
	t.Logf("during %s of alarm: %d rows committed, %d new messages delivered", alarmHold, written, arrived)
	if arrived > 0 {
		t.Errorf("%d new messages arrived while the broker blocked publishing; want none", arrived)
	}
	if written == 0 {
		t.Errorf("the producer committed nothing during the alarm: the outbox must not slow writers when the broker is away")
	}

	must(t, harness.SetMemoryWatermark(ctx, prev))
	cleared := time.Now()
	s.recovered("memory alarm cleared", cleared, from)
	if r.Output().Count("broker unblocked publishing") == 0 {
		t.Errorf("the relay did not log that the broker unblocked publishing")
	}
	s.finish(0)
}

// handshakeBound is how long a relay may take to give up on a node that
// accepts connections but never speaks AMQP, and to reach the next one: its
// own 10s connect timeout plus back-off.
const handshakeBound = 30 * time.Second

// TestBrokerNodeAcceptsButNeverAnswers lists, before the real broker, a
// node that accepts TCP connections and then says nothing (a hung broker, a
// load balancer without a backend). The relay must give up on it and fail
// over to the real broker, and must still exit on SIGTERM.
func TestBrokerNodeAcceptsButNeverAnswers(t *testing.T) {
	s := newScenario(t, "broker_silent_node")
	hole := silentListener(t)
	s.startLoad()
	began, from := time.Now(), s.cons.mark()
	r := s.startRelay(map[string]string{"OUTBOX_AMQP_URL": "amqp://guest:guest@" + hole + "/," + testenv.AMQPURL()})
	var at time.Time
	if !harness.Within(handshakeBound, func() bool {
		var ok bool
		at, ok = s.cons.firstBeganAfter(began, from)
		return ok
	}) {
		t.Errorf("nothing delivered %s after start: the relay is stuck on the silent node %s instead of failing over to %s\nrelay log:\n%s",
			handshakeBound, hole, testenv.AMQPURL(), r.Output().Grep(20, "broker", "connect", "leadership"))
		r.threadStacks()
		if _, exited := r.terminate(10 * time.Second); !exited {
			t.Errorf("the relay, stuck on the silent node, did not exit within 10s of SIGTERM (OUTBOX_SHUTDOWN_TIMEOUT 5s); its goroutines are dumped into its log below")
			r.quit(5 * time.Second)
		}
		return
	}
	s.faults++
	s.recoveries = append(s.recoveries, at.Sub(began))
	t.Logf("first delivery %s after start, through the second node", at.Sub(began).Round(time.Millisecond))
	s.finish(0)
}

// silentListener accepts TCP connections on a loopback port and never
// writes to them; it closes them at the end of the test.
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}
