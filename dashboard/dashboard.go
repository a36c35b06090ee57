// Package dashboard is batuta's operations dashboard: an http.Handler that
// shows what an Orchestrator runs (per-workflow statistics, runs with
// their task graphs and attempts, schedules, triggers, dead letters) and
// acts on it (retry, cancel, pause and resume a workflow, redrive dead
// letters). It needs only the standard library: server-rendered HTML
// (html/template, embedded), a small stylesheet and script, and
// server-sent events for live updates; without JavaScript pages refresh
// themselves.
//
// Mount it under any prefix:
//
//	h, err := dashboard.New(dashboard.Config{Orchestrator: o, Authorize: dashboard.BasicAuth("ops", secret)})
//	mux.Handle("/ops/", http.StripPrefix("/ops", h))
//
// Every link it writes is relative, so the prefix needs no configuration.
//
// Security: Authorize runs before anything else, for every request
// (pages, assets, the event stream, actions). Actions are POST requests,
// checked three ways: http.CrossOriginProtection (Sec-Fetch-Site and
// Origin), a per-browser CSRF token (an HMAC of a SameSite=Strict cookie)
// and the method. ReadOnly hides the actions and refuses them. Pages carry
// a strict Content-Security-Policy (no inline script or style).
package dashboard

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
)

// Config configures New.
type Config struct {
	// Orchestrator is shown and acted on. Required.
	Orchestrator *batuta.Orchestrator
	// Authorize decides whether a request may proceed; it runs before
	// anything else, for every request. Return nil to allow. An error that
	// is (or wraps) a *batuta.HTTPError answers with its status and
	// message; any other error answers 401 with the Challenge header.
	// Required, unless UnsafeAllowUnauthenticated is set. BasicAuth makes
	// one.
	Authorize func(r *http.Request) error
	// UnsafeAllowUnauthenticated lets New build a dashboard without
	// Authorize: anyone who reaches it can read every run's event and
	// outputs and, unless ReadOnly, retry, cancel and pause. Set it only
	// behind a gateway that authenticates, or in tests. New logs a warning.
	UnsafeAllowUnauthenticated bool
	// Challenge is the WWW-Authenticate header sent with a 401. Default:
	// `Basic realm="batuta", charset="UTF-8"` (browsers then ask for a
	// user and password, as BasicAuth checks).
	Challenge string
	// ReadOnly hides every action and refuses them (403).
	ReadOnly bool
	// DeadLetters are dead-letter boxes to show besides those of the
	// triggers bound to the Orchestrator (Orchestrator.DeadLetterBoxes,
	// always shown), e.g. an outbox's dead rows read by another process.
	DeadLetters []batuta.DeadLetterBox
	// Title names the deployment in the header and the page titles.
	// Default "batuta".
	Title string
	// StatsWindow is the overview's window: runs/min, success rate and
	// durations cover the runs finished in the last StatsWindow.
	// Default 15 minutes.
	StatsWindow time.Duration
	// RefreshInterval is how often a live page is re-rendered on the
	// server (and sent to the browser if it changed). Default 2 s.
	RefreshInterval time.Duration
	// StreamLifetime ends a live-update stream after this long; the
	// browser reconnects at once (so Authorize runs again). Default 5 min.
	StreamLifetime time.Duration
	// PageSize is how many runs a page lists. Default 50, at most 500.
	PageSize int
	// MaxPreviewBytes caps each event payload and output shown. Default
	// 16 KiB.
	MaxPreviewBytes int
	// CSRFKey signs the CSRF tokens. Default: a random key, so a token is
	// valid on this process only; behind a load balancer without sticky
	// sessions give every instance the same key (at least 32 bytes).
	CSRFKey []byte
	// Logger logs unexpected errors. Default slog.Default().
	Logger *slog.Logger
}

// ErrInvalidConfig is wrapped by New's errors.
var ErrInvalidConfig = batuta.ErrInvalidConfig

func (c Config) validate() error {
	bad := func(field, reason string) error {
		return &batuta.ConfigError{Field: "dashboard.Config." + field, Reason: reason}
	}
	switch {
	case c.Orchestrator == nil:
		return bad("Orchestrator", "required")
	case c.Authorize == nil && !c.UnsafeAllowUnauthenticated:
		return bad("Authorize", "required (e.g. dashboard.BasicAuth(user, password)); set UnsafeAllowUnauthenticated to run without authorisation")
	case c.Authorize != nil && c.UnsafeAllowUnauthenticated:
		return bad("UnsafeAllowUnauthenticated", "set together with Authorize; choose one")
	case c.StatsWindow < 0:
		return bad("StatsWindow", "must not be negative")
	case c.RefreshInterval < 0:
		return bad("RefreshInterval", "must not be negative")
	case c.StreamLifetime < 0:
		return bad("StreamLifetime", "must not be negative")
	case c.PageSize < 0 || c.PageSize > 500:
		return bad("PageSize", "must be between 0 (default 50) and 500")
	case c.MaxPreviewBytes < 0:
		return bad("MaxPreviewBytes", "must not be negative")
	case c.CSRFKey != nil && len(c.CSRFKey) < 32:
		return bad("CSRFKey", "must be at least 32 bytes")
	}
	for i, b := range c.DeadLetters {
		if b == nil {
			return bad(fmt.Sprintf("DeadLetters[%d]", i), "is nil")
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Challenge == "" {
		c.Challenge = `Basic realm="batuta", charset="UTF-8"`
	}
	if c.Title == "" {
		c.Title = "batuta"
	}
	if c.StatsWindow == 0 {
		c.StatsWindow = 15 * time.Minute
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = 2 * time.Second
	}
	if c.StreamLifetime == 0 {
		c.StreamLifetime = 5 * time.Minute
	}
	if c.PageSize == 0 {
		c.PageSize = 50
	}
	if c.MaxPreviewBytes == 0 {
		c.MaxPreviewBytes = 16 << 10
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// BasicAuth returns an Authorize func that admits requests carrying HTTP
// basic credentials user and password (compared in constant time).
// Serve the dashboard over TLS, or on a trusted network: basic
// credentials travel in clear text otherwise.
func BasicAuth(user, password string) func(*http.Request) error {
	wantU, wantP := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(password))
	return func(r *http.Request) error {
		u, p, ok := r.BasicAuth()
		if !ok {
			return errors.New("dashboard: no basic credentials")
		}
		gotU, gotP := sha256.Sum256([]byte(u)), sha256.Sum256([]byte(p))
		if subtle.ConstantTimeCompare(gotU[:], wantU[:])&subtle.ConstantTimeCompare(gotP[:], wantP[:]) != 1 {
			return errors.New("dashboard: wrong user or password")
		}
		return nil
	}
}

//go:embed ui
var uiFS embed.FS

type handler struct {
	cfg   Config
	o     *batuta.Orchestrator
	key   []byte
	cop   *http.CrossOriginProtection
	pages map[string]*template.Template
	views *http.ServeMux // GET pages, rendered whole or, for the event stream, their <main> alone
	mux   *http.ServeMux
}

// New returns the dashboard's handler, or an error wrapping
// ErrInvalidConfig (a *batuta.ConfigError naming the field).
func New(cfg Config) (http.Handler, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if cfg.UnsafeAllowUnauthenticated {
		cfg.Logger.Warn("batuta: dashboard built WITHOUT authorisation (UnsafeAllowUnauthenticated): anyone who reaches it can read every run and, unless ReadOnly, retry, cancel and pause")
	}
	h := &handler{cfg: cfg, o: cfg.Orchestrator, cop: http.NewCrossOriginProtection()}
	h.key = cfg.CSRFKey
	if h.key == nil {
		h.key = make([]byte, 32)
		if _, err := rand.Read(h.key); err != nil {
			return nil, fmt.Errorf("dashboard: CSRF key: %w", err)
		}
	}
	if err := h.parseTemplates(); err != nil {
		return nil, err
	}
	static, err := fs.Sub(uiFS, "ui/static")
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}

	views := http.NewServeMux()
	views.HandleFunc("GET /{$}", h.view("overview", h.overview))
	views.HandleFunc("GET /runs", h.view("runs", h.runs))
	views.HandleFunc("GET /runs/{id}", h.view("run", h.run))
	views.HandleFunc("GET /schedules", h.view("schedules", h.schedules))
	views.HandleFunc("GET /triggers", h.view("triggers", h.triggers))
	views.HandleFunc("GET /dead-letters", h.view("deadletters", h.deadLetters))
	views.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, r, http.StatusNotFound, "No such page", "There is no page at "+r.URL.Path+".")
	})
	h.views = views

	mux := http.NewServeMux()
	mux.Handle("/", views)
	mux.Handle("GET /static/", http.StripPrefix("/static/", staticHandler(static)))
	mux.HandleFunc("GET /events", h.events)
	mux.HandleFunc("POST /runs/{id}/retry", h.action(h.retryRun))
	mux.HandleFunc("POST /runs/{id}/cancel", h.action(h.cancelRun))
	mux.HandleFunc("POST /runs/retry", h.action(h.retryRuns))
	mux.HandleFunc("POST /runs/cancel", h.action(h.cancelRuns))
	mux.HandleFunc("POST /workflows/{name}/pause", h.action(h.pauseWorkflow(true)))
	mux.HandleFunc("POST /workflows/{name}/resume", h.action(h.pauseWorkflow(false)))
	mux.HandleFunc("POST /dead-letters/redrive", h.action(h.deadLetterAction(true)))
	mux.HandleFunc("POST /dead-letters/delete", h.action(h.deadLetterAction(false)))
	h.mux = mux
	return h, nil
}

func staticHandler(static fs.FS) http.Handler {
	fsrv := http.FileServerFS(static)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "private, max-age=300")
		fsrv.ServeHTTP(w, r)
	})
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "same-origin")
	hd.Set("X-Frame-Options", "DENY")
	if h.cfg.Authorize != nil {
		if err := h.cfg.Authorize(r); err != nil {
			var he *batuta.HTTPError
			if errors.As(err, &he) {
				http.Error(w, he.Message, he.Status)
				return
			}
			hd.Set("WWW-Authenticate", h.cfg.Challenge)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	if r.URL.Path == "" { // mounted as StripPrefix("/ops", h) and asked for "/ops"
		hd.Set("Location", lastSegment(r.RequestURI)+"/")
		w.WriteHeader(http.StatusMovedPermanently)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// seeOther redirects to target, a path relative to the request's URL.
// (http.Redirect would make it absolute from the path after StripPrefix,
// losing the prefix.)
func seeOther(w http.ResponseWriter, target string) {
	w.Header().Set("Location", target)
	w.WriteHeader(http.StatusSeeOther)
}

func lastSegment(uri string) string {
	p, _, _ := strings.Cut(uri, "?")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		p = p[i+1:]
	}
	if p == "" {
		return "."
	}
	return "./" + p
}

// rootOf returns the relative path from the page at path (as the handler
// sees it, after any StripPrefix) to the dashboard's root: "./" for "/"
// and "/runs", "../" for "/runs/ID".
func rootOf(path string) string {
	n := strings.Count(strings.TrimPrefix(path, "/"), "/")
	if n == 0 {
		return "./"
	}
	return strings.Repeat("../", n)
}

// CSRF: the cookie holds a random value per browser; forms carry an HMAC
// of it under the handler's key. A cross-site form cannot read the cookie
// (nor, SameSite=Strict, send it), so it cannot forge the token.
const (
	csrfCookie = "batuta_dash_csrf"
	csrfField  = "csrf"
	flashName  = "batuta_dash_flash"
)

func (h *handler) csrfToken(w http.ResponseWriter, r *http.Request) string {
	c, err := r.Cookie(csrfCookie)
	var v string
	if err == nil && len(c.Value) >= 32 {
		v = c.Value
	} else {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		v = base64.RawURLEncoding.EncodeToString(b)
		//nolint:gosec // Secure only over TLS: a dashboard served over plain HTTP (localhost, a LAN) must still get its cookie.
		http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: v, Path: "/", HttpOnly: true,
			Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	}
	return h.sign(v)
}

func (h *handler) sign(v string) string {
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte("batuta-dashboard-csrf\x00"))
	m.Write([]byte(v))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkCSRF reports why a POST is refused, or "".
func (h *handler) checkCSRF(r *http.Request) string {
	if err := h.cop.Check(r); err != nil {
		return "cross-origin request refused"
	}
	c, err := r.Cookie(csrfCookie)
	if err != nil || c.Value == "" {
		return "missing CSRF cookie: reload the page and try again"
	}
	got := r.PostFormValue(csrfField)
	if got == "" || !hmac.Equal([]byte(got), []byte(h.sign(c.Value))) {
		return "invalid CSRF token: reload the page and try again"
	}
	return ""
}

// action wraps a POST handler: read-only and CSRF checks, then fn, which
// returns the flash message and where to go (relative to the root).
func (h *handler) action(fn func(r *http.Request) (msg, target string, err error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if h.cfg.ReadOnly {
			h.fail(w, r, http.StatusForbidden, "Read-only dashboard", "This dashboard is read-only: actions are disabled.")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if why := h.checkCSRF(r); why != "" {
			h.fail(w, r, http.StatusForbidden, "Request refused", why)
			return
		}
		msg, target, err := fn(r)
		kind := "ok"
		if err != nil {
			kind, msg = "error", err.Error()
			h.cfg.Logger.Warn("batuta: dashboard action failed", "path", r.URL.Path, "error", err)
		}
		setFlash(w, kind, msg)
		seeOther(w, rootOf(r.URL.Path)+target)
	}
}

func setFlash(w http.ResponseWriter, kind, msg string) {
	if len(msg) > 600 {
		msg = msg[:600] + "…"
	}
	//nolint:gosec // not secret (a message shown once); HttpOnly and SameSite=Strict, Secure would lose it over plain HTTP.
	http.SetCookie(w, &http.Cookie{Name: flashName, Value: url.QueryEscape(kind + ":" + msg), Path: "/",
		MaxAge: 60, HttpOnly: true, SameSite: http.SameSiteStrictMode})
}

type flash struct{ Kind, Msg string }

func takeFlash(w http.ResponseWriter, r *http.Request) *flash {
	c, err := r.Cookie(flashName)
	if err != nil {
		return nil
	}
	//nolint:gosec // deletes the flash cookie (see setFlash).
	http.SetCookie(w, &http.Cookie{Name: flashName, Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	v, err := url.QueryUnescape(c.Value)
	if err != nil {
		return nil
	}
	kind, msg, ok := strings.Cut(v, ":")
	if !ok || (kind != "ok" && kind != "error") {
		return nil
	}
	return &flash{Kind: kind, Msg: msg}
}

// page is what every template gets.
type page struct {
	Title    string // of the page
	Site     string // Config.Title
	Nav      string // the nav entry to highlight
	Root     string // relative path to the dashboard's root, for <base>
	Path     string // the page's path relative to the root, for the event stream
	CSRF     string
	ReadOnly bool
	Live     bool
	Refresh  int // seconds, for the no-JS refresh
	Flash    *flash
	Version  string        // of <main>, so the event stream sends only changes
	Main     template.HTML // <main>, rendered
	Now      time.Time
	Data     any
}

type partialKey struct{}

// view wraps a page function: it renders the whole page, or only its
// <main> for the event stream.
func (h *handler) view(name string, fn func(r *http.Request, p *page) (status int, err error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		partial := r.Context().Value(partialKey{}) != nil
		p := &page{Site: h.cfg.Title, Nav: name, Root: rootOf(r.URL.Path), ReadOnly: h.cfg.ReadOnly,
			Live: true, Refresh: max(int(h.cfg.RefreshInterval/time.Second)*5, 10), Now: h.o.Now()}
		p.Path = strings.TrimPrefix(r.URL.Path, "/")
		if r.URL.RawQuery != "" {
			p.Path += "?" + r.URL.RawQuery
		}
		if !partial {
			if !h.cfg.ReadOnly {
				p.CSRF = h.csrfToken(w, r)
			}
			p.Flash = takeFlash(w, r)
		} else if !h.cfg.ReadOnly {
			if c, err := r.Cookie(csrfCookie); err == nil {
				p.CSRF = h.sign(c.Value)
			}
		}
		status, err := fn(r, p)
		if err != nil {
			var rt redirectTo
			if errors.As(err, &rt) {
				seeOther(w, p.Root+rt.target)
				return
			}
			var nf notFound
			if errors.As(err, &nf) {
				h.fail(w, r, http.StatusNotFound, "Not found", nf.msg)
				return
			}
			h.cfg.Logger.Error("batuta: dashboard page failed", "path", r.URL.Path, "error", err)
			h.fail(w, r, http.StatusInternalServerError, "Something went wrong", err.Error())
			return
		}
		h.render(w, r, name, status, p)
	}
}

type notFound struct{ msg string }

func (n notFound) Error() string { return n.msg }

func (h *handler) render(w http.ResponseWriter, r *http.Request, name string, status int, p *page) {
	t := h.pages[name]
	tmpl := "layout"
	if r.Context().Value(partialKey{}) != nil {
		tmpl = "main"
	}
	// <main> is rendered once: the event stream sends it alone, and its
	// hash is the version the stream compares.
	var buf bytes.Buffer
	err := t.ExecuteTemplate(&buf, "main", p)
	if err == nil && tmpl == "layout" {
		p.Version = version(buf.Bytes())
		p.Main = template.HTML(buf.String()) //nolint:gosec // the output of our own html/template, escaped there
		buf.Reset()
		err = t.ExecuteTemplate(&buf, "layout", p)
	}
	if err != nil {
		h.cfg.Logger.Error("batuta: dashboard template failed", "page", name, "error", err)
		http.Error(w, "template error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

type failure struct{ Heading, Detail string }

func (h *handler) fail(w http.ResponseWriter, r *http.Request, status int, heading, detail string) {
	p := &page{Title: heading, Site: h.cfg.Title, Root: rootOf(r.URL.Path), ReadOnly: h.cfg.ReadOnly, Now: h.o.Now(),
		Data: failure{Heading: heading, Detail: detail}}
	h.render(w, r, "error", status, p)
}
