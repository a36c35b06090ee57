package batuta_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

const testToken = "Bearer s3cret"

func bearerAuth(r *http.Request) error {
	switch r.Header.Get("Authorization") {
	case testToken:
		return nil
	case "Bearer readonly":
		if r.Method == http.MethodGet {
			return nil
		}
		return &batuta.HTTPError{Status: http.StatusForbidden, Message: "read-only token"}
	}
	return errors.New("bad token")
}

// httpFixture is an orchestrator with a few functions and workflows behind
// the HTTP handler.
type httpFixture struct {
	o       *batuta.Orchestrator
	srv     *httptest.Server
	release chan struct{}
	blocked atomic.Int32
}

func newHTTPFixture(t *testing.T, ocfg batuta.Config, hcfg batuta.HTTPConfig, run bool) *httpFixture {
	t.Helper()
	f := &httpFixture{o: lambdaOrch(t, ocfg), release: make(chan struct{})}
	require.NoError(t, batuta.RegisterFunc(f.o, batuta.FunctionConfig{Name: "greet"},
		func(_ context.Context, in struct{ Name string }) (map[string]string, error) {
			return map[string]string{"greeting": "hello " + in.Name}, nil
		}))
	require.NoError(t, batuta.RegisterFunc(f.o, batuta.FunctionConfig{Name: "sum"},
		func(_ context.Context, in struct {
			Items []struct {
				N int8 `json:"n"`
			} `json:"items"`
		}) (int, error) {
			total := 0
			for _, it := range in.Items {
				total += int(it.N)
			}
			return total, nil
		}))
	require.NoError(t, batuta.RegisterFunc(f.o, batuta.FunctionConfig{Name: "fail", Retry: batuta.RetryPolicy{MaxAttempts: 1}},
		func(context.Context, batuta.Event) (int, error) { return 0, errors.New("out of stock") }))
	require.NoError(t, batuta.RegisterFunc(f.o, batuta.FunctionConfig{Name: "block"},
		func(ctx context.Context, _ batuta.Event) (int, error) {
			f.blocked.Add(1)
			select {
			case <-f.release:
			case <-ctx.Done():
			}
			return 1, nil
		}))
	require.NoError(t, f.o.Register(&batuta.Workflow{Name: "report", Tasks: []batuta.Task{
		{Name: "gather", Run: func(context.Context, *batuta.Input) (any, error) { return []int{1, 2, 3}, nil }},
		{Name: "render", Deps: []string{"gather"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			v, err := batuta.Output[[]int](in, "gather")
			return len(v), err
		}},
	}}))
	if hcfg.Authorize == nil && !hcfg.UnsafeAllowUnauthenticated {
		hcfg.Authorize = bearerAuth
	}
	hcfg.Orchestrator = f.o
	if hcfg.Logger == nil {
		hcfg.Logger = lambdaQuiet
	}
	h, err := batuta.NewHTTPHandler(hcfg)
	require.NoError(t, err)
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	t.Cleanup(func() {
		select {
		case <-f.release:
		default:
			close(f.release)
		}
	})
	if run {
		runOrch(t, f.o)
	}
	return f
}

type httpResult struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (f *httpFixture) do(t *testing.T, method, path, body string, headers ...string) httpResult {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), method, f.srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", testToken)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := f.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	res := httpResult{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"), "body %s", b)
	var v any
	require.NoError(t, json.Unmarshal(b, &v), "body is not JSON: %s", b)
	if m, ok := v.(map[string]any); ok {
		res.body = m
	}
	return res
}

func TestHTTPHandlerConfig(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{})
	tests := []struct {
		field string
		cfg   batuta.HTTPConfig
	}{
		{"Orchestrator", batuta.HTTPConfig{Authorize: bearerAuth}},
		{"Authorize", batuta.HTTPConfig{Orchestrator: o}},
		{"UnsafeAllowUnauthenticated", batuta.HTTPConfig{Orchestrator: o, Authorize: bearerAuth, UnsafeAllowUnauthenticated: true}},
		{"MaxBodyBytes", batuta.HTTPConfig{Orchestrator: o, Authorize: bearerAuth, MaxBodyBytes: -1}},
		{"InvokeTimeout", batuta.HTTPConfig{Orchestrator: o, Authorize: bearerAuth, InvokeTimeout: -1}},
		{"RetryAfter", batuta.HTTPConfig{Orchestrator: o, Authorize: bearerAuth, RetryAfter: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.field, func(t *testing.T) {
			h, err := batuta.NewHTTPHandler(tc.cfg)
			require.Nil(t, h)
			var ce *batuta.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field)
		})
	}
	// Explicitly unauthenticated works, and logs loudly.
	var logs strings.Builder
	h, err := batuta.NewHTTPHandler(batuta.HTTPConfig{Orchestrator: o, UnsafeAllowUnauthenticated: true, Logger: slogTo(&logs)})
	require.NoError(t, err)
	require.NotNil(t, h)
	require.Contains(t, logs.String(), "WITHOUT authorisation")
}

func TestHTTPAuthorization(t *testing.T) {
	t.Parallel()
	f := newHTTPFixture(t, batuta.Config{}, batuta.HTTPConfig{}, true)
	for _, tc := range []struct {
		name, auth string
		status     int
	}{
		{"missing", "", http.StatusUnauthorized},
		{"wrong", "Bearer nope", http.StatusUnauthorized},
		{"forbidden", "Bearer readonly", http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Even an unknown route answers the auth error: nothing leaks.
			for _, path := range []string{"/functions/greet", "/no/such/route"} {
				res := f.do(t, http.MethodPost, path, `{}`, "Authorization", tc.auth)
				require.Equal(t, tc.status, res.status, path)
				require.NotEmpty(t, res.body["error"])
			}
		})
	}
	res := f.do(t, http.MethodPost, "/functions/greet", `{"name":"ana"}`, "Authorization", testToken)
	require.Equal(t, http.StatusOK, res.status)
}

func TestHTTPInvokeAndRuns(t *testing.T) {
	t.Parallel()
	f := newHTTPFixture(t, batuta.Config{}, batuta.HTTPConfig{}, true)

	// Synchronous invoke: the output is the body, like a function URL.
	res := f.do(t, http.MethodPost, "/functions/greet", `{"name":"ana"}`)
	require.Equal(t, http.StatusOK, res.status, res.raw)
	require.Equal(t, map[string]any{"greeting": "hello ana"}, res.body)
	runID := res.header.Get(batuta.HeaderRunID)
	require.NotEmpty(t, runID)

	// An empty body is no payload.
	res = f.do(t, http.MethodPost, "/functions/greet", ``)
	require.Equal(t, http.StatusOK, res.status, res.raw)
	require.Equal(t, "hello ", res.body["greeting"])

	// Same idempotency key and body, same run.
	res = f.do(t, http.MethodPost, "/functions/greet", `{"name":"bo"}`, batuta.HeaderIdempotencyKey, "greet-1")
	require.Equal(t, http.StatusOK, res.status)
	first := res.header.Get(batuta.HeaderRunID)
	res = f.do(t, http.MethodPost, "/functions/greet", `{"name":"bo"}`, batuta.HeaderIdempotencyKey, "greet-1")
	require.Equal(t, first, res.header.Get(batuta.HeaderRunID))
	require.Equal(t, "hello bo", res.body["greeting"])

	// Run status with task states.
	res = f.do(t, http.MethodGet, "/runs/"+runID, "")
	require.Equal(t, http.StatusOK, res.status)
	require.Equal(t, runID, res.body["id"])
	require.Equal(t, "greet", res.body["workflow"])
	require.Equal(t, "succeeded", res.body["state"])
	tasks := res.body["tasks"].([]any)
	require.Len(t, tasks, 1)
	task := tasks[0].(map[string]any)
	require.Equal(t, batuta.FunctionTask, task["name"])
	require.Equal(t, "succeeded", task["state"])
	require.Equal(t, map[string]any{"greeting": "hello ana"}, task["output"])

	// Asynchronous invoke.
	res = f.do(t, http.MethodPost, "/functions/greet/async", `{"name":"cy"}`, batuta.HeaderCEType, "greeting.requested")
	require.Equal(t, http.StatusAccepted, res.status, res.raw)
	asyncID := res.body["run_id"].(string)
	require.Equal(t, "/runs/"+asyncID, res.header.Get("Location"))
	require.Equal(t, "/runs/"+asyncID, res.body["status_url"])
	run, err := f.o.Wait(testCtx(t), asyncID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, run.State)
	require.Equal(t, "greeting.requested", run.Event.Type)
	require.Equal(t, "http", run.Event.Source)

	// Workflow run with an idempotency key: submitted once.
	res = f.do(t, http.MethodPost, "/workflows/report/runs", `{"month":"2025-01"}`, batuta.HeaderIdempotencyKey, "report-2025-01")
	require.Equal(t, http.StatusAccepted, res.status, res.raw)
	wfID := res.body["run_id"].(string)
	res = f.do(t, http.MethodPost, "/workflows/report/runs", `{"month":"2025-01"}`, batuta.HeaderIdempotencyKey, "report-2025-01")
	require.Equal(t, http.StatusAccepted, res.status)
	require.Equal(t, wfID, res.body["run_id"])
	_, err = f.o.Wait(testCtx(t), wfID)
	require.NoError(t, err)
	res = f.do(t, http.MethodGet, "/runs/"+wfID, "")
	require.Equal(t, http.StatusOK, res.status)
	require.Equal(t, "report-2025-01", res.body["event_id"])
	tasks = res.body["tasks"].([]any)
	require.Len(t, tasks, 2)
	require.Equal(t, "render", tasks[1].(map[string]any)["name"])
	require.EqualValues(t, 3, tasks[1].(map[string]any)["output"])

	// A failed function: 502 with its error and run.
	res = f.do(t, http.MethodPost, "/functions/fail", `{}`)
	require.Equal(t, http.StatusBadGateway, res.status)
	require.Equal(t, "out of stock", res.body["error"])
	require.NotEmpty(t, res.body["run_id"])
	require.Equal(t, "failed", res.body["state"])
}

// TestHTTPBadInput checks the status and JSON error of every bad input.
func TestHTTPBadInput(t *testing.T) {
	t.Parallel()
	f := newHTTPFixture(t, batuta.Config{MaxPayloadBytes: 64}, batuta.HTTPConfig{MaxBodyBytes: 128}, true)
	tests := []struct {
		name    string
		method  string
		path    string
		body    string
		headers []string
		status  int
		check   func(t *testing.T, res httpResult)
	}{
		{name: "malformed JSON invoke", method: "POST", path: "/functions/greet", body: `{"name":`, status: 400},
		{name: "malformed JSON async", method: "POST", path: "/functions/greet/async", body: `nope`, status: 400},
		{name: "malformed JSON workflow", method: "POST", path: "/workflows/report/runs", body: `{]`, status: 400},
		{name: "bad event field", method: "POST", path: "/workflows/report/runs", body: `{}`, headers: []string{batuta.HeaderCEType, strings.Repeat("x", 2000)}, status: 400},
		{name: "unknown function", method: "POST", path: "/functions/nope", body: `{}`, status: 404},
		{name: "unknown function async", method: "POST", path: "/functions/nope/async", body: `{}`, status: 404},
		{name: "workflow is not a function", method: "POST", path: "/functions/report", body: `{}`, status: 404},
		{name: "unknown workflow", method: "POST", path: "/workflows/nope/runs", body: `{}`, status: 404},
		{name: "unknown run", method: "GET", path: "/runs/0190d3a0-0000-7000-8000-000000000000", status: 404},
		{name: "unknown route", method: "GET", path: "/nothing/here", status: 404},
		{name: "body over the handler limit", method: "POST", path: "/functions/greet", body: `{"name":"` + strings.Repeat("a", 200) + `"}`, status: 413},
		{name: "body over the payload cap", method: "POST", path: "/workflows/report/runs", body: `{"name":"` + strings.Repeat("a", 80) + `"}`, status: 413},
		{name: "wrong method on function", method: "GET", path: "/functions/greet", status: 405, check: func(t *testing.T, res httpResult) {
			require.Equal(t, "POST", res.header.Get("Allow"))
		}},
		{name: "wrong method on run", method: "DELETE", path: "/runs/x", status: 405, check: func(t *testing.T, res httpResult) {
			require.Equal(t, "GET, HEAD", res.header.Get("Allow"))
		}},
		{name: "wrong method on workflow", method: "PUT", path: "/workflows/report/runs", body: `{}`, status: 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := f.do(t, tc.method, tc.path, tc.body, tc.headers...)
			require.Equal(t, tc.status, res.status, res.raw)
			msg, ok := res.body["error"].(string)
			require.True(t, ok, "JSON error body: %s", res.raw)
			require.NotEmpty(t, msg)
			if tc.check != nil {
				tc.check(t, res)
			}
		})
	}
}

func TestHTTPBusyAndTimeouts(t *testing.T) {
	t.Parallel()
	f := newHTTPFixture(t, batuta.Config{MaxInFlightRuns: 1}, batuta.HTTPConfig{InvokeTimeout: 50 * time.Millisecond, RetryAfter: 1500 * time.Millisecond}, true)

	// The function does not finish within InvokeTimeout: 504 with the run.
	res := f.do(t, http.MethodPost, "/functions/block", `{}`)
	require.Equal(t, http.StatusGatewayTimeout, res.status, res.raw)
	runID := res.body["run_id"].(string)
	require.NotEmpty(t, runID)
	require.EqualValues(t, 1, f.blocked.Load())

	// That run fills the in-flight cap: 429 with Retry-After, on every route.
	for _, path := range []string{"/functions/greet", "/functions/greet/async", "/workflows/report/runs"} {
		res = f.do(t, http.MethodPost, path, `{}`)
		require.Equal(t, http.StatusTooManyRequests, res.status, path)
		require.Equal(t, "2", res.header.Get("Retry-After"))
		require.NotEmpty(t, res.body["error"])
	}

	// The run is still there and can be polled.
	res = f.do(t, http.MethodGet, "/runs/"+runID, "")
	require.Equal(t, http.StatusOK, res.status)
	require.Equal(t, "running", res.body["state"])
	close(f.release)
	_, err := f.o.Wait(testCtx(t), runID)
	require.NoError(t, err)
}

// TestHTTPBeforeRun: requests that arrive before Run starts are accepted;
// a synchronous one waits for Run to execute it.
func TestHTTPBeforeRun(t *testing.T) {
	t.Parallel()
	f := newHTTPFixture(t, batuta.Config{}, batuta.HTTPConfig{}, false)
	res := f.do(t, http.MethodPost, "/functions/greet/async", `{"name":"later"}`)
	require.Equal(t, http.StatusAccepted, res.status)
	asyncID := res.body["run_id"].(string)

	type answer struct {
		status int
		body   string
		err    error
	}
	sync := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/functions/greet", strings.NewReader(`{"name":"early"}`))
		req.Header.Set("Authorization", testToken)
		req.Header.Set(batuta.HeaderIdempotencyKey, "early")
		resp, err := f.srv.Client().Do(req)
		if err != nil {
			sync <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		sync <- answer{resp.StatusCode, string(b), err}
	}()
	require.Eventually(t, func() bool {
		_, err := f.o.Store().FindRun(context.Background(), "greet", "early")
		return err == nil
	}, 10*time.Second, time.Millisecond)
	runOrch(t, f.o)
	a := <-sync
	require.NoError(t, a.err)
	require.Equal(t, http.StatusOK, a.status, a.body)
	require.JSONEq(t, `{"greeting":"hello early"}`, a.body)
	run, err := f.o.Wait(testCtx(t), asyncID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, run.State)
}

// TestHTTPMountedUnderPrefix: status URLs keep the prefix the handler is
// mounted under.
func TestHTTPMountedUnderPrefix(t *testing.T) {
	t.Parallel()
	o := lambdaOrch(t, batuta.Config{})
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "f"},
		func(context.Context, batuta.Event) (int, error) { return 1, nil }))
	h, err := batuta.NewHTTPHandler(batuta.HTTPConfig{Orchestrator: o, UnsafeAllowUnauthenticated: true, Logger: lambdaQuiet})
	require.NoError(t, err)
	srv := httptest.NewServer(http.StripPrefix("/api/v1", h))
	defer srv.Close()
	resp, err := srv.Client().Post(srv.URL+"/api/v1/functions/f/async", "application/json", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	loc := resp.Header.Get("Location")
	require.Equal(t, "/api/v1/runs/"+resp.Header.Get(batuta.HeaderRunID), loc)
	runOrch(t, o)
	_, err = o.Wait(testCtx(t), resp.Header.Get(batuta.HeaderRunID))
	require.NoError(t, err)
	resp, err = srv.Client().Get(srv.URL + loc)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// runCount is how many runs the store holds.
func runCount(t *testing.T, o *batuta.Orchestrator) int {
	t.Helper()
	runs, err := o.ListRuns(testCtx(t), batuta.RunFilter{})
	require.NoError(t, err)
	return len(runs)
}

// TestHTTPWrongShapeInput: valid JSON that does not decode into the
// function's input type is the caller's error: 400 with the decode error,
// and no run is created (so the key can be reused with a corrected body).
func TestHTTPWrongShapeInput(t *testing.T) {
	t.Parallel()
	f := newHTTPFixture(t, batuta.Config{}, batuta.HTTPConfig{}, true)
	for _, tc := range []struct {
		name, path, body, want string
	}{
		{"number for a string", "/functions/greet", `{"name":5}`, `field "Name": cannot decode a JSON number into string`},
		{"array for an object", "/functions/greet", `[1,2]`, `the body: cannot decode a JSON array into struct`},
		{"string for an object, async", "/functions/greet/async", `"ana"`, `the body: cannot decode a JSON string into struct`},
		{"number out of range", "/functions/sum", `{"items":[{"n":1},{"n":300}]}`, `field "items.n": cannot decode a JSON number 300 into int8`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := runCount(t, f.o)
			res := f.do(t, http.MethodPost, tc.path, tc.body, batuta.HeaderIdempotencyKey, "shape-"+tc.name)
			require.Equal(t, http.StatusBadRequest, res.status, res.raw)
			msg := res.body["error"].(string)
			require.Contains(t, msg, "does not fit the input of function")
			require.Contains(t, msg, tc.want)
			require.Empty(t, res.header.Get(batuta.HeaderRunID))
			require.Equal(t, before, runCount(t, f.o), "no run for a rejected body")
		})
	}
	// The key of a refused request is still free.
	res := f.do(t, http.MethodPost, "/functions/greet", `{"name":"ana"}`, batuta.HeaderIdempotencyKey, "shape-number for a string")
	require.Equal(t, http.StatusOK, res.status, res.raw)
	require.Equal(t, "hello ana", res.body["greeting"])
	// Handlers that take the Event or raw bytes accept any JSON; so do
	// workflows, whose input has no declared type.
	res = f.do(t, http.MethodPost, "/functions/fail/async", `[1,"x",{"y":null}]`)
	require.Equal(t, http.StatusAccepted, res.status, res.raw)
	res = f.do(t, http.MethodPost, "/workflows/report/runs", `"anything"`)
	require.Equal(t, http.StatusAccepted, res.status, res.raw)
}

// TestHTTPIdempotencyKeyReused: a key reused with another body is refused
// with 422 (Stripe, IETF draft-ietf-httpapi-idempotency-key-header), the
// same key with the same body still returns the first run, and the
// fingerprint lives in the Store (a new orchestrator and handler on it, as
// after a restart, refuse it too).
func TestHTTPIdempotencyKeyReused(t *testing.T) {
	t.Parallel()
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	f := newHTTPFixture(t, batuta.Config{Store: store}, batuta.HTTPConfig{}, true)

	res := f.do(t, http.MethodPost, "/functions/greet", `{"name":"bo"}`, batuta.HeaderIdempotencyKey, "k-1")
	require.Equal(t, http.StatusOK, res.status, res.raw)
	first := res.header.Get(batuta.HeaderRunID)
	run, err := f.o.GetRun(testCtx(t), first)
	require.NoError(t, err)
	require.Len(t, run.Event.Metadata[batuta.MetadataBodySHA256], 64)

	for _, tc := range []struct{ name, path, key string }{
		{"sync", "/functions/greet", batuta.HeaderIdempotencyKey},
		{"async", "/functions/greet/async", batuta.HeaderIdempotencyKey},
		{"ce-id", "/functions/greet/async", batuta.HeaderCEID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := f.do(t, http.MethodPost, tc.path, `{"name":"someone else"}`, tc.key, "k-1")
			require.Equal(t, http.StatusUnprocessableEntity, res.status, res.raw)
			require.Contains(t, res.body["error"], `idempotency key "k-1" was already used with a different request body`)
			require.Empty(t, res.header.Get(batuta.HeaderRunID))
		})
	}
	// The same body (whitespace-only counts as empty) gets the same run.
	res = f.do(t, http.MethodPost, "/functions/greet", `{"name":"bo"}`, batuta.HeaderIdempotencyKey, "k-1")
	require.Equal(t, http.StatusOK, res.status, res.raw)
	require.Equal(t, first, res.header.Get(batuta.HeaderRunID))
	require.Equal(t, "hello bo", res.body["greeting"])
	res = f.do(t, http.MethodPost, "/workflows/report/runs", ``, batuta.HeaderIdempotencyKey, "k-empty")
	require.Equal(t, http.StatusAccepted, res.status, res.raw)
	res = f.do(t, http.MethodPost, "/workflows/report/runs", " \n", batuta.HeaderIdempotencyKey, "k-empty")
	require.Equal(t, http.StatusAccepted, res.status, res.raw)
	res = f.do(t, http.MethodPost, "/workflows/report/runs", `{}`, batuta.HeaderIdempotencyKey, "k-empty")
	require.Equal(t, http.StatusUnprocessableEntity, res.status, res.raw)

	// A restart: another orchestrator and handler over the same store.
	o2 := lambdaOrch(t, batuta.Config{Store: store})
	require.NoError(t, batuta.RegisterFunc(o2, batuta.FunctionConfig{Name: "greet"},
		func(_ context.Context, in struct{ Name string }) (string, error) { return in.Name, nil }))
	h2, err := batuta.NewHTTPHandler(batuta.HTTPConfig{Orchestrator: o2, Authorize: bearerAuth, Logger: lambdaQuiet})
	require.NoError(t, err)
	srv2 := httptest.NewServer(h2)
	defer srv2.Close()
	f2 := &httpFixture{o: o2, srv: srv2}
	res = f2.do(t, http.MethodPost, "/functions/greet/async", `{"name":"eve"}`, batuta.HeaderIdempotencyKey, "k-1")
	require.Equal(t, http.StatusUnprocessableEntity, res.status, res.raw)
	res = f2.do(t, http.MethodPost, "/functions/greet/async", `{"name":"bo"}`, batuta.HeaderIdempotencyKey, "k-1")
	require.Equal(t, http.StatusAccepted, res.status, res.raw)
	require.Equal(t, first, res.body["run_id"])

	// A run with the same event ID started another way (no fingerprint)
	// is the key's run: nothing to compare.
	id, err := f.o.Submit(testCtx(t), "greet", batuta.Event{ID: "k-go", Data: []byte(`{"name":"go"}`)})
	require.NoError(t, err)
	res = f.do(t, http.MethodPost, "/functions/greet/async", `{"name":"http"}`, batuta.HeaderIdempotencyKey, "k-go")
	require.Equal(t, http.StatusAccepted, res.status, res.raw)
	require.Equal(t, id, res.body["run_id"])
}

// TestHTTPHead: HEAD is answered wherever GET is, with no body.
func TestHTTPHead(t *testing.T) {
	t.Parallel()
	f := newHTTPFixture(t, batuta.Config{}, batuta.HTTPConfig{}, true)
	res := f.do(t, http.MethodPost, "/functions/greet/async", `{"name":"ana"}`)
	require.Equal(t, http.StatusAccepted, res.status, res.raw)
	runID := res.body["run_id"].(string)

	// head returns the status, the header and the body of a HEAD request.
	head := func(path string) (int, http.Header, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(testCtx(t), http.MethodHead, f.srv.URL+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", testToken)
		resp, err := f.srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, resp.Header, b
	}
	status, hdr, b := head("/runs/" + runID)
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, b)
	require.Equal(t, runID, hdr.Get(batuta.HeaderRunID))
	require.Equal(t, "application/json", hdr.Get("Content-Type"))

	status, _, b = head("/runs/0190d3a0-0000-7000-8000-000000000000")
	require.Equal(t, http.StatusNotFound, status)
	require.Empty(t, b)

	// POST routes still refuse it.
	status, hdr, b = head("/functions/greet")
	require.Equal(t, http.StatusMethodNotAllowed, status)
	require.Equal(t, "POST", hdr.Get("Allow"))
	require.Empty(t, b)
}

// TestHTTPHostileInput: error bodies repeat at most 64 bytes of what the
// caller sent, with control characters escaped, and stay valid JSON.
func TestHTTPHostileInput(t *testing.T) {
	t.Parallel()
	f := newHTTPFixture(t, batuta.Config{}, batuta.HTTPConfig{MaxBodyBytes: 64 << 10}, true)
	huge := strings.Repeat("A", 8000)
	digits := strings.Repeat("9", 8000)
	ctl := "\x01\x1b[31mred\x7f"
	longKey := strings.Repeat("K", 1000)
	// the first request with longKey, so the second is a reuse
	res := f.do(t, http.MethodPost, "/workflows/report/runs", `{"v":1}`, batuta.HeaderIdempotencyKey, longKey)
	require.Equal(t, http.StatusAccepted, res.status, res.raw)

	for _, tc := range []struct {
		name, method, path, body string
		headers                  []string
		status                   int
		input                    string // what must not come back whole
	}{
		{"huge function name", "POST", "/functions/" + huge, `{}`, nil, 404, huge},
		{"huge async name", "POST", "/functions/" + huge + "/async", `{}`, nil, 404, huge},
		{"huge workflow name", "POST", "/workflows/" + huge + "/runs", `{}`, nil, 404, huge},
		{"huge run id", "GET", "/runs/" + huge, ``, nil, 404, huge},
		{"huge route", "GET", "/" + huge + "/x/y/z", ``, nil, 404, huge},
		{"huge method", strings.Repeat("M", 5000), "/runs/x", ``, nil, 405, strings.Repeat("M", 5000)},
		{"huge number", "POST", "/functions/sum", `{"items":[{"n":` + digits + `}]}`, nil, 400, digits},
		{"reused huge key", "POST", "/workflows/report/runs", `{"v":2}`, []string{batuta.HeaderIdempotencyKey, longKey}, 422, longKey},
		{"control characters in name", "POST", "/functions/" + url.PathEscape(ctl+huge), `{}`, nil, 404, ctl},
		{"invalid UTF-8 in name", "POST", "/functions/%ff%fe" + huge, `{}`, nil, 404, "\xff\xfe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := f.do(t, tc.method, tc.path, tc.body, tc.headers...)
			require.Equal(t, tc.status, res.status, "%.200s", res.raw)
			msg, ok := res.body["error"].(string)
			require.True(t, ok)
			require.False(t, strings.Contains(msg, tc.input[:min(len(tc.input), 65)]), "error repeats more than 64 bytes of input: %.200q", msg)
			require.LessOrEqual(t, len(res.raw), 400, "error body: %.200q", res.raw)
			for _, c := range msg {
				require.False(t, c < 0x20 || c == 0x7f || c == utf8.RuneError, "control or invalid character %q in %q", c, msg)
			}
			if len(tc.input) > 64 {
				require.Contains(t, msg, "...")
			}
		})
	}
}
