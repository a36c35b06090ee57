package batuta

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// HTTPConfig configures NewHTTPHandler.
type HTTPConfig struct {
	// Orchestrator receives the work. Required.
	Orchestrator *Orchestrator
	// Authorize decides whether a request may proceed; it runs before
	// anything else (so an unauthorised caller learns nothing, not even
	// which names exist). Return nil to allow. Any error answers 401,
	// unless it is (or wraps) an *HTTPError, whose status and message are
	// used (e.g. 403). Required, unless UnsafeAllowUnauthenticated is set.
	Authorize func(r *http.Request) error
	// UnsafeAllowUnauthenticated lets NewHTTPHandler run without
	// Authorize: anyone who can reach the handler can start any workflow
	// and read any run. Set it only behind a gateway that authenticates,
	// or in tests. The handler logs a warning when it is built this way.
	UnsafeAllowUnauthenticated bool
	// MaxBodyBytes caps request bodies; larger ones get 413. Default 1 MiB.
	// The orchestrator's MaxPayloadBytes applies too (also 413).
	MaxBodyBytes int64
	// InvokeTimeout bounds how long a synchronous invocation is waited
	// for; past it the answer is 504 with the run ID (the run goes on;
	// poll GET /runs/{id}). Default 30 s.
	InvokeTimeout time.Duration
	// RetryAfter is the Retry-After sent with 429 (busy). Default 1 s;
	// rounded up to whole seconds.
	RetryAfter time.Duration
	// Logger logs unexpected errors (5xx). Default slog.Default().
	Logger *slog.Logger
}

// Defaults of HTTPConfig.
const (
	DefaultHTTPMaxBodyBytes  = 1 << 20
	DefaultHTTPInvokeTimeout = 30 * time.Second
	DefaultHTTPRetryAfter    = time.Second
)

func (c HTTPConfig) withDefaults() HTTPConfig {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultHTTPMaxBodyBytes
	}
	if c.InvokeTimeout == 0 {
		c.InvokeTimeout = DefaultHTTPInvokeTimeout
	}
	if c.RetryAfter == 0 {
		c.RetryAfter = DefaultHTTPRetryAfter
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c HTTPConfig) validate() error {
	switch {
	case c.Orchestrator == nil:
		return &ConfigError{Field: "Orchestrator", Reason: "required"}
	case c.Authorize == nil && !c.UnsafeAllowUnauthenticated:
		return &ConfigError{Field: "Authorize", Reason: "required (set UnsafeAllowUnauthenticated to run without authorisation)"}
	case c.Authorize != nil && c.UnsafeAllowUnauthenticated:
		return &ConfigError{Field: "UnsafeAllowUnauthenticated", Reason: "set together with Authorize; choose one"}
	case c.MaxBodyBytes < 0:
		return &ConfigError{Field: "MaxBodyBytes", Reason: "must not be negative"}
	case c.InvokeTimeout < 0:
		return &ConfigError{Field: "InvokeTimeout", Reason: "must not be negative"}
	case c.RetryAfter < 0:
		return &ConfigError{Field: "RetryAfter", Reason: "must not be negative"}
	}
	return nil
}

// HTTPError is an error with an HTTP status. An Authorize func returns one
// to choose the status (403 rather than 401, say).
type HTTPError struct {
	Status  int
	Message string
}

func (e *HTTPError) Error() string { return fmt.Sprintf("batuta: http %d: %s", e.Status, e.Message) }

// Request headers the HTTP handler reads. Idempotency-Key (or, failing it,
// Ce-Id) becomes the event ID, so a retried request starts no second run;
// the Ce-* headers follow CloudEvents' HTTP binding.
const (
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderCEID           = "Ce-Id"
	HeaderCEType         = "Ce-Type"
	HeaderCESource       = "Ce-Source"
	HeaderCESubject      = "Ce-Subject"
	// HeaderRunID is set on responses that concern a run.
	HeaderRunID = "Batuta-Run-Id"
)

// MetadataBodySHA256 is the event metadata key under which the HTTP handler
// keeps the hex SHA-256 of a request body that came with an
// Idempotency-Key (or Ce-Id). It is stored with the run's event, in any
// Store, so a key reused with another body is refused (422) even after a
// restart. It counts toward the orchestrator's MaxPayloadBytes like any
// metadata (80 bytes).
const MetadataBodySHA256 = "batutabodysha256"

// maxEcho is the most bytes of a caller's input (a name, a path, a key, a
// value in a decode error) that an error response repeats; longer input is
// cut and ends in "...".
const maxEcho = 64

// NewHTTPHandler returns the HTTP front door to cfg.Orchestrator, built on
// net/http alone. Mount it under a prefix with http.StripPrefix. Routes:
//
//	POST /functions/{name}          invoke a function synchronously; the
//	                                 body is the payload (JSON, may be
//	                                 empty); 200 with the output as the body
//	POST /functions/{name}/async    start a function; 202 {"run_id", "status_url"}
//	                                 and a Location header (GET it for the status)
//	POST /workflows/{name}/runs     start a workflow run; 202 as above
//	GET  /runs/{id}                 200 with the run and its task states
//	POST /runs/{id}/signals/{name}  signal the run (Orchestrator.Signal); the
//	                                 body is the signal's data; 202
//	                                 {"run_id", "signal", "delivered", "task"}
//	POST /workflows/{name}/signals/{signal}?subject=KEY
//	                                 signal the unfinished runs whose event
//	                                 Subject is KEY (or the Ce-Subject header;
//	                                 Orchestrator.SignalWhere); 202 {"runs": n, ...}
//
// HEAD is answered wherever GET is, with the same status and no body.
//
// Every POST takes an Idempotency-Key header (the event ID): the same key
// with the same body returns the same run; the same key with another body
// is refused with 422, as Stripe and the IETF Idempotency-Key draft do (the
// body's SHA-256 is kept in the event's metadata, MetadataBodySHA256).
// A function's body is decoded into the handler's input type before any run
// is created: JSON of the wrong shape is a 400 with the decode error, and
// no run is recorded (so the key may be reused with a corrected body).
//
// Errors are JSON {"error": "...", "run_id": ...} with status 400
// (malformed JSON, JSON that does not decode into the function's input, or
// bad event fields), 401/403 (Authorize), 404 (unknown function, workflow,
// run or route), 405 (wrong method, with Allow), 409 (a signal no task
// waits for: ErrNoWaiter), 413 (body over MaxBodyBytes or the payload cap),
// 422 (Idempotency-Key reused with a different body), 429 (busy, or a
// run's signal buffer full; with Retry-After), 502 (the function failed;
// the body carries its error and run ID) and 504 (the function timed out,
// or InvokeTimeout passed; the run goes on). An error never repeats more
// than the first 64 bytes of anything the caller sent (names, paths, keys),
// quoted with control characters escaped.
//
// Like Invoke, a synchronous invocation that arrives before the
// orchestrator's Run starts (or while it restarts) is accepted and waits,
// up to InvokeTimeout, for Run to execute it.
//
// The handler is safe for concurrent use.
func NewHTTPHandler(cfg HTTPConfig) (http.Handler, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if cfg.UnsafeAllowUnauthenticated {
		cfg.Logger.Warn("batuta: HTTP handler built WITHOUT authorisation (UnsafeAllowUnauthenticated): anyone who reaches it can start work and read runs")
	}
	h := &httpHandler{cfg: cfg, o: cfg.Orchestrator}
	mux := http.NewServeMux()
	mux.HandleFunc("/functions/{name}", h.method(http.MethodPost, h.invoke))
	mux.HandleFunc("/functions/{name}/async", h.method(http.MethodPost, h.invokeAsync))
	mux.HandleFunc("/workflows/{name}/runs", h.method(http.MethodPost, h.submit))
	mux.HandleFunc("/runs/{id}", h.method(http.MethodGet, h.getRun))
	mux.HandleFunc("/runs/{id}/signals/{name}", h.method(http.MethodPost, h.signalRun))
	mux.HandleFunc("/workflows/{name}/signals/{signal}", h.method(http.MethodPost, h.signalWhere))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.error(w, r, http.StatusNotFound, "no such route "+quote(r.URL.Path), nil)
	})
	h.mux = mux
	return h, nil
}

type httpHandler struct {
	cfg HTTPConfig
	o   *Orchestrator
	mux *http.ServeMux
}

func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Authorize != nil {
		if err := h.cfg.Authorize(r); err != nil {
			var he *HTTPError
			if errors.As(err, &he) {
				h.error(w, r, he.Status, he.Message, nil)
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="batuta"`)
			h.error(w, r, http.StatusUnauthorized, "unauthorized", nil)
			return
		}
	}
	h.mux.ServeHTTP(w, r)
}

// method answers 405 with Allow for any other method than m (and HEAD,
// when m is GET: net/http sends no body for it).
func (h *httpHandler) method(m string, next http.HandlerFunc) http.HandlerFunc {
	allow := m
	if m == http.MethodGet {
		allow = "GET, HEAD"
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != m && (m != http.MethodGet || r.Method != http.MethodHead) {
			w.Header().Set("Allow", allow)
			h.error(w, r, http.StatusMethodNotAllowed, "method "+quote(r.Method)+" not allowed; use "+allow, nil)
			return
		}
		next(w, r)
	}
}

// event reads the request into an event: body as data (valid JSON or
// empty), headers as ID, type, source and subject. It writes the error
// response itself and reports false on failure.
func (h *httpHandler) event(w http.ResponseWriter, r *http.Request) (Event, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.error(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over the limit of %d bytes", h.cfg.MaxBodyBytes), nil)
			return Event{}, false
		}
		h.error(w, r, http.StatusBadRequest, "reading request body: "+err.Error(), nil)
		return Event{}, false
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		body = nil
	} else if !json.Valid(body) {
		h.error(w, r, http.StatusBadRequest, "request body is not valid JSON", nil)
		return Event{}, false
	}
	ev := Event{
		ID:      r.Header.Get(HeaderIdempotencyKey),
		Type:    r.Header.Get(HeaderCEType),
		Source:  r.Header.Get(HeaderCESource),
		Subject: r.Header.Get(HeaderCESubject),
		Data:    body,
	}
	if ev.ID == "" {
		ev.ID = r.Header.Get(HeaderCEID)
	}
	if ev.Source == "" {
		ev.Source = SourceHTTP
	}
	if ev.ID != "" {
		sum := sha256.Sum256(body)
		ev.Metadata = map[string]string{MetadataBodySHA256: hex.EncodeToString(sum[:])}
	}
	return ev, true
}

// functionEvent is event for a function: the body must also decode into
// the handler's input type, or the answer is 400 and no run is created.
func (h *httpHandler) functionEvent(w http.ResponseWriter, r *http.Request, name string) (Event, bool) {
	ev, ok := h.event(w, r)
	if !ok {
		return ev, false
	}
	if err := h.o.checkFunctionInput(name, ev.Data); err != nil {
		h.error(w, r, http.StatusBadRequest, fmt.Sprintf("request body does not fit the input of function %s: %s", quote(name), decodeErrorText(err)), nil)
		return ev, false
	}
	return ev, true
}

// submitEvent starts a run of name for ev and returns its ID. When the
// event ID names an existing run whose request had another body, it answers
// 422 and reports false; it writes every other error response too.
func (h *httpHandler) submitEvent(ctx context.Context, w http.ResponseWriter, r *http.Request, name string, ev Event) (string, bool) {
	runID, created, err := h.o.submit(ctx, name, ev, nil)
	if err != nil {
		h.submitError(w, r, err)
		return "", false
	}
	sum := ev.Metadata[MetadataBodySHA256]
	if created || sum == "" {
		return runID, true
	}
	run, err := h.o.GetRun(ctx, runID)
	if err != nil {
		if r.Context().Err() == nil {
			h.cfg.Logger.ErrorContext(ctx, "batuta: http: reading the run of a reused idempotency key failed", "run", runID, "error", err)
			h.error(w, r, http.StatusInternalServerError, "could not read the run of this idempotency key", nil)
		}
		return "", false
	}
	// A run without a fingerprint was not started over HTTP (or by an older
	// version): there is nothing to compare, so it is the key's run.
	if prev := run.Event.Metadata[MetadataBodySHA256]; prev != "" && prev != sum {
		h.error(w, r, http.StatusUnprocessableEntity, fmt.Sprintf("idempotency key %s was already used with a different request body; resend the original body to get its result, or use a new key", quote(ev.ID)), nil)
		return "", false
	}
	return runID, true
}

func (h *httpHandler) invoke(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !h.o.IsFunction(name) {
		h.error(w, r, http.StatusNotFound, "no function named "+quote(name), nil)
		return
	}
	ev, ok := h.functionEvent(w, r, name)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.InvokeTimeout)
	defer cancel()
	runID, ok := h.submitEvent(ctx, w, r, name, ev)
	if !ok {
		return
	}
	w.Header().Set(HeaderRunID, runID)
	run, err := h.o.Wait(ctx, runID)
	if err != nil {
		if r.Context().Err() != nil {
			return // the client left; the run goes on
		}
		h.error(w, r, http.StatusGatewayTimeout, fmt.Sprintf("function %s did not finish within %v; the run goes on", name, h.cfg.InvokeTimeout), map[string]any{"run_id": runID, "status_url": statusURL(r, runID)})
		return
	}
	var fe *FunctionError
	if err := runError(name, run); errors.As(err, &fe) {
		extra := map[string]any{"run_id": runID, "state": fe.State, "attempts": fe.Attempts}
		status := http.StatusBadGateway
		if fe.TimedOut {
			status = http.StatusGatewayTimeout
		}
		h.error(w, r, status, fe.Err, extra)
		return
	}
	out := run.Tasks[0].Output
	var b []byte
	if raw, ok := out.(json.RawMessage); ok {
		b = raw
	} else if b, err = json.Marshal(out); err != nil {
		h.error(w, r, http.StatusInternalServerError, "output is not JSON-encodable: "+err.Error(), map[string]any{"run_id": runID})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

func (h *httpHandler) invokeAsync(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !h.o.IsFunction(name) {
		h.error(w, r, http.StatusNotFound, "no function named "+quote(name), nil)
		return
	}
	ev, ok := h.functionEvent(w, r, name)
	if !ok {
		return
	}
	h.start(w, r, name, ev)
}

func (h *httpHandler) submit(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := h.o.workflow(name); err != nil {
		h.error(w, r, http.StatusNotFound, "no workflow named "+quote(name), nil)
		return
	}
	ev, ok := h.event(w, r)
	if !ok {
		return
	}
	h.start(w, r, name, ev)
}

// start submits a run and answers 202 with its ID.
func (h *httpHandler) start(w http.ResponseWriter, r *http.Request, name string, ev Event) {
	runID, ok := h.submitEvent(r.Context(), w, r, name, ev)
	if !ok {
		return
	}
	status := statusURL(r, runID)
	w.Header().Set(HeaderRunID, runID)
	w.Header().Set("Location", status)
	h.json(w, http.StatusAccepted, map[string]string{"run_id": runID, "status_url": status})
}

// statusURL is the absolute path of GET /runs/{id}, under whatever prefix
// the handler is mounted (http.StripPrefix leaves the original path in
// RequestURI).
func statusURL(r *http.Request, runID string) string {
	prefix := ""
	if u, err := url.ParseRequestURI(r.RequestURI); err == nil {
		prefix = strings.TrimSuffix(u.Path, r.URL.Path)
	}
	return prefix + "/runs/" + url.PathEscape(runID)
}

// submitError maps a Submit error to its status.
func (h *httpHandler) submitError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrBusy):
		h.retryAfter(w)
		h.error(w, r, http.StatusTooManyRequests, "busy: too many runs in flight; retry later", nil)
	case errors.Is(err, ErrPayloadTooLarge):
		h.error(w, r, http.StatusRequestEntityTooLarge, err.Error(), nil)
	case errors.Is(err, ErrInvalidPayload):
		h.error(w, r, http.StatusBadRequest, err.Error(), nil)
	case errors.Is(err, ErrUnknownWorkflow):
		// Not err.Error(): it lists the registered workflows, for the Go
		// caller, not for a client.
		h.error(w, r, http.StatusNotFound, "unknown workflow", nil)
	case r.Context().Err() != nil:
		// The client left.
	default:
		h.cfg.Logger.ErrorContext(r.Context(), "batuta: http: submit failed", "path", clip(r.URL.Path), "error", err)
		h.error(w, r, http.StatusInternalServerError, "could not start the run", nil)
	}
}

func (h *httpHandler) getRun(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	run, err := h.o.GetRun(r.Context(), id)
	if err != nil {
		if errors.Is(err, ErrRunNotFound) {
			h.error(w, r, http.StatusNotFound, "no run "+quote(id), nil)
			return
		}
		h.cfg.Logger.ErrorContext(r.Context(), "batuta: http: get run failed", "run", clip(id), "error", err)
		h.error(w, r, http.StatusInternalServerError, "could not read the run", nil)
		return
	}
	w.Header().Set(HeaderRunID, run.ID)
	h.json(w, http.StatusOK, newHTTPRun(run))
}

// httpRun is a run as the HTTP handler shows it: the event's envelope
// without its data, each task's state, attempts and (when JSON-encodable)
// output.
type httpRun struct {
	ID         string     `json:"id"`
	Workflow   string     `json:"workflow"`
	State      RunState   `json:"state"`
	EventID    string     `json:"event_id"`
	EventType  string     `json:"event_type,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  time.Time  `json:"started_at,omitzero"`
	FinishedAt time.Time  `json:"finished_at,omitzero"`
	Error      string     `json:"error,omitempty"`
	Tasks      []httpTask `json:"tasks"`
}

type httpTask struct {
	Name     string          `json:"name"`
	State    TaskState       `json:"state"`
	Error    string          `json:"error,omitempty"`
	Attempts []Attempt       `json:"attempts,omitempty"`
	Output   json.RawMessage `json:"output,omitempty"`
	// A wait (docs/waits.md): since when, for what, until when.
	WaitingSince time.Time `json:"waiting_since,omitzero"`
	WaitingFor   string    `json:"waiting_for,omitempty"`
	NotBefore    time.Time `json:"not_before,omitzero"`
}

func newHTTPRun(r *Run) httpRun {
	out := httpRun{
		ID: r.ID, Workflow: r.Workflow, State: r.State, EventID: r.Event.ID, EventType: r.Event.Type,
		CreatedAt: r.CreatedAt, StartedAt: r.StartedAt, FinishedAt: r.FinishedAt, Error: r.Error,
		Tasks: make([]httpTask, len(r.Tasks)),
	}
	for i, t := range r.Tasks {
		ht := httpTask{Name: t.Name, State: t.State, Error: t.Error, Attempts: t.Attempts,
			WaitingSince: t.WaitingSince, WaitingFor: t.WaitingFor, NotBefore: t.NotBefore}
		switch v := t.Output.(type) {
		case nil:
		case json.RawMessage:
			ht.Output = v
		default:
			if b, err := json.Marshal(v); err == nil {
				ht.Output = b
			}
		}
		out.Tasks[i] = ht
	}
	return out
}

func (h *httpHandler) retryAfter(w http.ResponseWriter) {
	secs := int((h.cfg.RetryAfter + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
}

func (h *httpHandler) json(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encoding the response failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// error writes a JSON error {"error": msg, ...extra}.
func (h *httpHandler) error(w http.ResponseWriter, r *http.Request, status int, msg string, extra map[string]any) {
	body := make(map[string]any, len(extra)+1)
	for k, v := range extra {
		body[k] = v
	}
	body["error"] = msg
	if status == http.StatusInternalServerError {
		h.cfg.Logger.WarnContext(r.Context(), "batuta: http: request failed", "path", clip(r.URL.Path), "status", status, "error", msg)
	}
	h.json(w, status, body)
}

// clip cuts s to its first maxEcho bytes (on a UTF-8 boundary) and marks
// the cut with "...".
func clip(s string) string {
	if len(s) <= maxEcho {
		return s
	}
	n := maxEcho
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// quote is clip, quoted as a Go string: control characters and invalid
// UTF-8 are escaped.
func quote(s string) string { return strconv.Quote(clip(s)) }

// decodeErrorText describes why a body did not decode into a function's
// input, repeating at most maxEcho bytes of the body.
func decodeErrorText(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		where := "the body"
		if te.Field != "" {
			where = "field " + quote(te.Field)
		}
		// Value is "number", "string", ... or, for a number out of range,
		// the number itself.
		return fmt.Sprintf("%s: cannot decode a JSON %s into %v", where, clip(te.Value), te.Type)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	}
	// A type's own UnmarshalJSON may repeat the input: keep the start.
	msg := err.Error()
	if errors.Is(err, ErrInvalidPayload) {
		msg = strings.TrimPrefix(msg, ErrInvalidPayload.Error()+": ")
	}
	return quote(msg)
}
