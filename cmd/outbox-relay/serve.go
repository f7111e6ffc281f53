package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/outbox-relay/outbox-relay/relay"
)

// cmdRun runs the relay, and the metrics and health server beside it, until
// ctx is done.
func cmdRun(ctx context.Context, e *env) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rcfg := e.cfg.relayConfig(e.log)
	rcfg.Registerer = reg
	r, err := relay.New(rcfg)
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	if e.cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", e.cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics server: %w", err)
		}
		srv := &http.Server{Handler: newMux(reg, r), ReadHeaderTimeout: 5 * time.Second}
		e.log.Info("serving metrics", slog.String("addr", ln.Addr().String()))
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	g.Go(func() error {
		err := r.Run(gctx)
		if err == nil && ctx.Err() == nil {
			// The server failed: gctx ended Run. Report that, not this.
			return nil
		}
		return err
	})
	return g.Wait()
}

// newMux serves /metrics, /healthz (the process answers) and /readyz (both
// connections are up, as leader or standby).
func newMux(reg *prometheus.Registry, r *relay.Relay) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !r.Ready() {
			http.Error(w, "not ready: waiting for PostgreSQL or RabbitMQ", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
