package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/dashboard"
)

func (opt options) checkHTTP() error {
	switch {
	case opt.httpInsecure && (opt.httpUser != "" || opt.httpPassword != ""):
		return errors.New("-http-insecure with -http-user/-http-password: choose one")
	case opt.httpInsecure:
		return nil
	case opt.httpUser == "" || opt.httpPassword == "":
		return errors.New("-http needs -http-user and -http-password (basic auth), or -http-insecure to serve without authentication")
	}
	return nil
}

// serveHTTP serves the dashboard at /, batuta's HTTP front door under /api/
// and the Prometheus metrics at /metrics on opt.http until stop is called,
// all behind the same authorization.
func serveHTTP(ctx context.Context, opt options, o *batuta.Orchestrator, metrics http.Handler, logger *slog.Logger, out io.Writer) (stop func(), err error) {
	var authorize func(*http.Request) error
	if !opt.httpInsecure {
		authorize = dashboard.BasicAuth(opt.httpUser, opt.httpPassword)
	}
	dash, err := dashboard.New(dashboard.Config{Orchestrator: o, Authorize: authorize,
		UnsafeAllowUnauthenticated: opt.httpInsecure, Title: "orders", Logger: logger})
	if err != nil {
		return nil, err
	}
	api, err := batuta.NewHTTPHandler(batuta.HTTPConfig{Orchestrator: o, Authorize: authorize,
		UnsafeAllowUnauthenticated: opt.httpInsecure, Logger: logger})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/", dash)
	mux.Handle("/api/", http.StripPrefix("/api", api))
	mux.Handle("GET /metrics", guard(authorize, metrics))
	ln, err := net.Listen("tcp", opt.http)
	if err != nil {
		return nil, fmt.Errorf("-http: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			logger.Error("orders: http server stopped", "error", err)
		}
	}()
	auth := "basic auth user " + opt.httpUser
	if opt.httpInsecure {
		auth = "NO authentication (-http-insecure)"
	}
	fmt.Fprintf(out, "dashboard: http://%s/ (%s); front door: http://%s/api/; metrics: http://%s/metrics\n", ln.Addr(), auth, ln.Addr(), ln.Addr())
	return func() {
		// Live pages hold event streams open: give them a moment, then close.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		<-done
	}, nil
}

// guard answers 401 to a request authorize refuses (nil authorize: no
// authentication, -http-insecure), as the dashboard and the front door do.
func guard(authorize func(*http.Request) error, h http.Handler) http.Handler {
	if authorize == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := authorize(r); err != nil {
			w.Header().Set("WWW-Authenticate", `Basic realm="batuta"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
