package dashboard

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// events streams a page's <main> as server-sent events: the page is
// rendered every RefreshInterval and sent when it changed. The script
// swaps it in (keeping focus, scroll and open <details>). The stream ends
// after StreamLifetime; the browser reconnects, and Authorize runs again.
//
// GET events?path=runs%3Fstate%3Dfailed streams the page "runs?state=failed".
func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	target := r.URL.Query().Get("path")
	u, err := url.Parse("/" + strings.TrimPrefix(target, "/"))
	if err != nil || strings.HasPrefix(u.Path, "/events") || strings.HasPrefix(u.Path, "/static/") || u.Host != "" {
		http.Error(w, "bad path", http.StatusBadRequest)
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("retry: 3000\n\n"))
	fl.Flush()

	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.StreamLifetime)
	defer cancel()
	pr := r.Clone(context.WithValue(ctx, partialKey{}, true))
	pr.URL = &url.URL{Path: u.Path, RawQuery: u.RawQuery}
	pr.RequestURI = u.RequestURI()
	pr.Method = http.MethodGet
	last := r.Header.Get("Last-Event-ID") // after a reconnection
	if last == "" {
		last = r.URL.Query().Get("v") // the version the page shows
	}
	first := true
	tick := time.NewTicker(h.cfg.RefreshInterval)
	defer tick.Stop()
	for {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
		rec := &recorder{header: http.Header{}, status: http.StatusOK}
		h.views.ServeHTTP(rec, pr)
		if rec.status != http.StatusOK {
			if _, err := w.Write([]byte("event: gone\ndata: " + http.StatusText(rec.status) + "\n\n")); err != nil {
				return
			}
			fl.Flush()
			return
		}
		sum := version(rec.buf.Bytes())
		if sum != last {
			var msg bytes.Buffer
			msg.WriteString("event: main\nid: " + sum + "\n")
			for line := range strings.SplitSeq(rec.buf.String(), "\n") {
				msg.WriteString("data: ")
				msg.WriteString(strings.TrimSuffix(line, "\r"))
				msg.WriteByte('\n')
			}
			msg.WriteByte('\n')
			if _, err := w.Write(msg.Bytes()); err != nil {
				return
			}
			fl.Flush()
			last = sum
		}
		first = false
	}
}

type recorder struct {
	header http.Header
	status int
	buf    bytes.Buffer
	wrote  bool
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(s int) {
	if !r.wrote {
		r.status, r.wrote = s, true
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.buf.Write(b)
}

// version identifies a rendering of a page's <main>.
func version(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:12])
}
