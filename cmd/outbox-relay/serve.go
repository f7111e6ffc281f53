package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/lmittmann/tint"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/outbox-relay/outbox-relay/relay"
)

// cmdRun runs the relay, and the metrics and probe server beside it, until
// ctx is done. The server outlives the relay's shutdown, so that /readyz
// can say 503 while the relay settles its last batches.
func cmdRun(ctx context.Context, e *env) error {
	b := readBuild()
	e.log.Info("outbox-relay starting", slog.String("version", b.version), slog.String("revision", b.revision),
		slog.String("go", b.goVersion))
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rcfg := e.cfg.relayConfig(e.log)
	rcfg.Registerer = reg
	rcfg.Version, rcfg.Revision = b.version, b.revision
	tp, err := relay.NewTracerProviderFromEnv(ctx, b.version, rcfg.BatchSize)
	if err != nil {
		return err
	}
	if tp != nil {
		rcfg.TracerProvider = tp
		defer func() {
			// Flush the last spans, even after SIGTERM.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil {
				e.log.Warn("flushing traces", tint.Err(err))
			}
		}()
	}
	r, err := relay.New(rcfg)
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	relayDone := make(chan struct{})
	if e.cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", e.cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics server: %w", err)
		}
		srv := &http.Server{Handler: newMux(reg, r), ReadHeaderTimeout: 5 * time.Second}
		e.log.Info("serving metrics and probes", slog.String("addr", ln.Addr().String()),
			slog.Duration("liveness_bound", r.LivenessBound()))
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			// A failed server ends gctx, and so the relay.
			<-relayDone
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	g.Go(func() error {
		defer close(relayDone)
		err := r.Run(gctx)
		if err == nil && ctx.Err() == nil {
			// The server failed: gctx ended Run. Report that, not this.
			return nil
		}
		return err
	})
	return g.Wait()
}

// probes are what the probe endpoints ask of the relay (*relay.Relay).
type probes interface {
	Ready() bool
	Live() error
	Status() (ok bool, state string)
}

// newMux serves /metrics and the probes:
//
//   - /healthz, liveness: 503 when the relay's loop has made no progress
//     for its liveness bound, or the relay stopped with an error;
//   - /readyz, readiness: 200 from the start of the relay until shutdown
//     begins, whatever the servers: a sidecar must not take its
//     application out of its Service because the broker is away;
//   - /statusz: 200 while the LISTEN connection and, on the leader, the
//     broker connection are up, with the state in a line of text.
func newMux(reg *prometheus.Registry, p probes) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := p.Live(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !p.Ready() {
			http.Error(w, "not ready: the relay is starting or shutting down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /statusz", func(w http.ResponseWriter, _ *http.Request) {
		ok, state := p.Status()
		if !ok {
			http.Error(w, state, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, state)
	})
	return mux
}
