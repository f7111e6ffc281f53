package relay

import (
	"errors"
	"sync/atomic"
	"time"
)

// The probes. Each answers one question, so that an orchestrator acts on
// the right one (docs/operations.md has the table):
//
//   - Ready (readiness): is the relay running and not shutting down? It
//     never depends on PostgreSQL or RabbitMQ, so that a relay running as a
//     sidecar cannot take its application out of its Service.
//   - Live (liveness): has the loop made progress within livenessBound?
//     Only a loop that stopped moving fails it, since only then would a
//     restart help.
//   - Status (for humans and scripts): are the LISTEN connection and, on
//     the leader, the broker connection up?

// runState is what the probes know of the current Run.
type runState struct {
	stopping <-chan struct{} // Run's ctx.Done(): closed once shutdown begins
	ended    atomic.Bool     // Run returned
	failed   atomic.Bool     // Run returned an error
}

// begin records that Run started with a context whose Done is stopping.
func (r *Relay) begin(stopping <-chan struct{}) *runState {
	s := &runState{stopping: stopping}
	r.prog.stepDone()
	r.run.Store(s)
	return s
}

// end records that Run returned err.
func (s *runState) end(err error) {
	s.failed.Store(err != nil)
	s.ended.Store(true)
}

func (s *runState) isStopping() bool {
	select {
	case <-s.stopping:
		return true
	default:
		return false
	}
}

// Ready reports whether the relay runs: from the start of Run until its
// context ends (shutdown begins). It does not depend on any connection;
// Status does.
func (r *Relay) Ready() bool {
	s := r.run.Load()
	return s != nil && !s.ended.Load() && !s.isStopping()
}

// Live returns an error, whose text is a one-line reason, when restarting
// the relay would help: its loop completed no step and made no claim for
// longer than the liveness bound (see livenessBound; a batch waiting on a
// broker that blocks publishing does not count), or Run returned an error.
// It returns nil before Run, during shutdown and after a clean return, and
// whatever the connections: a relay waiting for a server to come back
// retries on its own.
func (r *Relay) Live() error {
	s := r.run.Load()
	switch {
	case s == nil:
		return nil
	case s.failed.Load():
		return errors.New("relay stopped with an error (see its log)")
	case s.ended.Load() || s.isStopping():
		return nil
	}
	if why := r.prog.stuck(time.Now(), r.liveBound); why != "" {
		return errors.New(why)
	}
	return nil
}

// LivenessBound is how long the loop may go without progress before Live
// fails (see livenessBound).
func (r *Relay) LivenessBound() time.Duration { return r.liveBound }

// Status reports whether the relay's connections are up: the LISTEN
// connection (leader or standby) and, on the leader, the broker
// connection. state says so in a few words, for a person or a script.
func (r *Relay) Status() (ok bool, state string) {
	s := r.run.Load()
	switch {
	case s == nil:
		return false, "not started"
	case s.ended.Load():
		return false, "stopped"
	case s.isStopping():
		return false, "shutting down"
	}
	// ready is written by the loop at the start of each step.
	up, leader := r.ready.Load(), r.prog.leaderPID.Load() != 0
	switch {
	case up && leader:
		return true, "leader: PostgreSQL LISTEN connection up, broker connection up"
	case up:
		return true, "standby: PostgreSQL LISTEN connection up, another relay leads"
	case leader:
		return false, "leader: broker connection down"
	}
	return false, "PostgreSQL LISTEN connection down"
}

// Timeouts the loop's steps are bounded by, as livenessBound counts them.
const (
	leadTimeout         = 10 * time.Second // taking the leader lock (ensureLeader)
	listenerPingTimeout = 5 * time.Second  // the listener's ping after an idle wait (pgListener.ping)
	brokerConnect       = 10 * time.Second // dialling the broker and its handshake (amqpPublisher.Connect)
	retryDelayMax       = 10 * time.Second // the longest back-off between connects (retryDelay)
	livenessMargin      = 30 * time.Second
	livenessBoundMin    = 30 * time.Second
)

// livenessBound is how long the loop may go without ending a step or
// claiming a batch before Live fails: the longest stretch a healthy loop
// spends between two of those, plus livenessMargin. Every such stretch is
// bounded by a timeout:
//
//   - becoming the leader: opening the LISTEN session (connectTimeout per
//     database host, then its checks: connectTimeout and two
//     sessionCheckTimeouts), taking the lock (leadTimeout) and waiting for
//     the previous leader's batches (the fence: fenceWait, within
//     fenceWait + dbTimeout). 2 × ConfirmTimeout + 100s for one host: the
//     longest, 160s with the defaults;
//   - a batch: no confirm for ConfirmTimeout, then a settle and a claim
//     (dbTimeout each); time the broker blocks publishing does not count;
//   - idle: a wait on LISTEN (PollInterval), then a ping;
//   - a broker down: a connect, then a back-off sleep.
//
// With the defaults the bound is 190s.
func livenessBound(cfg Config, dbHosts int) time.Duration {
	lead := connectTimeout*time.Duration(dbHosts) + connectTimeout + 2*sessionCheckTimeout +
		leadTimeout + fenceWait(cfg) + dbTimeout
	batch := cfg.ConfirmTimeout + 2*dbTimeout
	idle := cfg.PollInterval + listenerPingTimeout
	broker := brokerConnect + retryDelayMax
	return max(max(lead, batch, idle, broker)+livenessMargin, livenessBoundMin)
}
