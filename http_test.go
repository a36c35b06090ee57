package batuta_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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

	// Same idempotency key, same run.
	res = f.do(t, http.MethodPost, "/functions/greet", `{"name":"bo"}`, batuta.HeaderIdempotencyKey, "greet-1")
	require.Equal(t, http.StatusOK, res.status)
	first := res.header.Get(batuta.HeaderRunID)
	res = f.do(t, http.MethodPost, "/functions/greet", `{"name":"someone else"}`, batuta.HeaderIdempotencyKey, "greet-1")
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
			require.Equal(t, "GET", res.header.Get("Allow"))
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
