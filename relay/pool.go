package relay

import (
	"context"
	"maps"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
)

// sessionConfigs tunes the store's pool and derives the listener's
// connection config from it. It returns the runtime parameters the
// database URL sets, which win over the relay's session settings.
func (r *Relay) sessionConfigs(poolCfg *pgxpool.Config, appName string, tracer acquireTracer) (*pgxpool.Config, *pgx.ConnConfig, map[string]string) {
	// Settings the relay's sessions need are set after connecting, not sent
	// as startup parameters (see sessionSettings); application_name is one
	// PgBouncer accepts.
	fromURL := maps.Clone(poolCfg.ConnConfig.RuntimeParams)
	poolCfg.ConnConfig.RuntimeParams["application_name"] = appName
	// The listener's session gets them once it proved to be the relay's
	// own; the pool's, from then on (see applySessionSettings).
	lisCfg := poolCfg.ConnConfig.Copy()
	prev := poolCfg.ConnConfig.AfterConnect
	poolCfg.ConnConfig.AfterConnect = func(ctx context.Context, c *pgconn.PgConn) error {
		if prev != nil {
			if err := prev(ctx, c); err != nil {
				return err
			}
		}
		if !r.sessionsOwn.Load() {
			return nil
		}
		return applySessionSettings(ctx, c, fromURL)
	}
	poolCfg.ConnConfig.Tracer = tracer
	poolCfg.ConnConfig.DialFunc = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 5 * time.Second}).DialContext

	// A drain holds two, one per batch on the wire (the next claim reuses
	// the settled batch's); then the gauges, a VACUUM and the wake-up flag.
	poolCfg.MaxConns = max(poolCfg.MaxConns, 5)
	// pgxpool pings a connection idle for a second before handing it out:
	// at every poll of an idle relay, a round trip for nothing. A broken
	// connection fails the claim instead, which is retried.
	poolCfg.ShouldPing = func(_ context.Context, p pgxpool.ShouldPingParams) bool { return p.IdleDuration > time.Minute }
	lisCfg.Tracer, lisCfg.DialFunc = poolCfg.ConnConfig.Tracer, poolCfg.ConnConfig.DialFunc
	// On the pool's connections, a query whose context ends is cancelled by
	// asking the server, and the socket is broken only if the server has
	// not answered 3s later. pgx's default breaks the socket at once: when
	// that cut a message in half, the server kept waiting for the rest, and
	// closing the pool at shutdown waited 15s for it (pgconn's asyncClose).
	// The listener keeps the default: its waits for a notification end by
	// their deadline, with no query for the server to cancel.
	poolCfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 3 * time.Second}
	}
	return poolCfg, lisCfg, fromURL
}

// warmConns is how many pool connections Warm opens: the drain's two
// batches on the wire, or a claim beside the gauges' refresh.
const warmConns = 2

// warmTimeout bounds Warm: it only saves the first claims a wait, and a
// server slow to open sessions must not hold the loop for dbTimeout.
const warmTimeout = 2 * time.Second

// Warm opens the pool's connections up to warmConns, so that no claim
// waits for one to be opened while rows wait: on 2 cores shared with
// three relays and eight writers at 1,000 rows/s, opening one (a backend
// to start, the session settings to apply) held a claim for 113 ms.
func (s *pgStore) Warm(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, warmTimeout)
	defer cancel()
	var conns []*pgxpool.Conn
	for range warmConns {
		c, err := s.pool.Acquire(ctx)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Release()
	}
}
