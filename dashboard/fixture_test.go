package dashboard_test

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/dashboard"
	"github.com/stretchr/testify/require"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// Hostile strings: the pages must show them as text.
const (
	hostileID      = `<script>alert("id")</script>`
	hostileSubject = `"><img src=x onerror=alert(1)>`
	hostileData    = `{"note":"</pre><script>alert(2)</script>","html":"<b onmouseover=alert(3)>x</b>"}`
)

// fixture is a real orchestrator on the memory store with runs in every
// state: succeeded, failed (a dependency is broken until fixed), running
// (blocked until released), pending (starts in an hour), canceled, held
// by a paused workflow, a panic, a dead letter; plus a cron schedule.
type fixture struct {
	o       *batuta.Orchestrator
	broken  atomic.Bool
	release chan struct{}
	runs    map[string]string // what → run ID
	dlq     *batuta.MemoryQueue
	in      *batuta.MemoryQueue
}

const (
	user, password = "ops", "s3cret"
)

func basicHeader() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{release: make(chan struct{}), runs: map[string]string{}}
	f.broken.Store(true)
	o, err := batuta.New(batuta.Config{Logger: quiet, PollInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	f.o = o
	ok := func(v any) batuta.TaskFunc {
		return func(context.Context, *batuta.Input) (any, error) { return v, nil }
	}
	require.NoError(t, o.Register(&batuta.Workflow{Name: "checkout", Tasks: []batuta.Task{
		{Name: "validate", Run: ok(map[string]any{"order": 42, "total_cents": 1999})},
		{Name: "charge", Deps: []string{"validate"}, Retry: batuta.RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond},
			Run: func(context.Context, *batuta.Input) (any, error) {
				if f.broken.Load() {
					return nil, errors.New("payment provider unavailable: 503 Service Unavailable")
				}
				return map[string]string{"payment_id": "pay_123"}, nil
			}},
		{Name: "send-email", Deps: []string{"charge"}, Run: ok("sent")},
		{Name: "reserve-stock", Deps: []string{"charge"}, Run: ok("reserved")},
		{Name: "complete", Deps: []string{"send-email", "reserve-stock"}, Run: ok("done")},
	}}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "report", Tasks: []batuta.Task{
		{Name: "build", Retry: batuta.RetryPolicy{MaxAttempts: 1}, Run: func(_ context.Context, in *batuta.Input) (any, error) {
			if string(in.Event().Data) == `"panic"` {
				panic("report template missing")
			}
			return strings.Repeat("a large report line\n", 2000), nil
		}},
	}}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "slow", Tasks: []batuta.Task{
		{Name: "work", Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
			select {
			case <-f.release:
				return "released", nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}},
	}}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "held", Tasks: []batuta.Task{{Name: "t", Run: ok(nil)}}}))
	cron, err := batuta.NewCron(batuta.CronConfig{Name: "nightly-report", Spec: "CRON_TZ=Europe/Paris 30 2 * * *", Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Bind("report", cron))
	f.in, err = batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	require.NoError(t, err)
	f.dlq, err = batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	require.NoError(t, err)
	qt, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: f.in, DeadLetter: batuta.DeadLetterQueue(f.dlq), Logger: quiet,
		Event: func(d batuta.Delivery) (batuta.Event, error) {
			if string(d.Message.Body) == "poison" {
				return batuta.Event{}, errors.New("unparsable order message")
			}
			return batuta.DefaultQueueEvent(d, "orders-in"), nil
		}})
	require.NoError(t, err)
	require.NoError(t, o.Bind("checkout", qt))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() {
		select {
		case <-f.release:
		default:
			close(f.release)
		}
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Error("Run did not return within 30s of cancel")
		}
		_ = f.in.Close()
		_ = f.dlq.Close()
	})

	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	submit := func(what, wf string, ev batuta.Event, opts ...batuta.SubmitOption) string {
		id, err := o.Submit(wctx, wf, ev, opts...)
		require.NoError(t, err, what)
		f.runs[what] = id
		return id
	}
	wait := func(what string, want batuta.RunState) {
		r, err := o.Wait(wctx, f.runs[what])
		require.NoError(t, err, what)
		require.Equal(t, want, r.State, "%s: %+v", what, r)
	}
	submit("failed", "checkout", batuta.Event{ID: "order-1", Subject: "customer-7", Data: []byte(`{"order":1}`)})
	wait("failed", batuta.RunFailed)
	submit("hostile", "checkout", batuta.Event{ID: hostileID, Subject: hostileSubject, Data: []byte(hostileData)})
	wait("hostile", batuta.RunFailed)
	submit("panicked", "report", batuta.Event{ID: "report-panic", Data: []byte(`"panic"`)})
	wait("panicked", batuta.RunFailed)
	submit("succeeded", "report", batuta.Event{ID: "report-1", Data: []byte(`"ok"`)})
	wait("succeeded", batuta.RunSucceeded)
	submit("pending", "checkout", batuta.Event{ID: "order-later"}, batuta.StartAfter(time.Hour))
	submit("canceled", "slow", batuta.Event{ID: "slow-canceled"})
	waitState(t, o, f.runs["canceled"], batuta.RunRunning)
	require.NoError(t, o.Cancel(wctx, f.runs["canceled"]))
	wait("canceled", batuta.RunCanceled)
	submit("running", "slow", batuta.Event{ID: "slow-running"})
	waitState(t, o, f.runs["running"], batuta.RunRunning)
	require.NoError(t, o.Pause(wctx, "held"))
	submit("paused", "held", batuta.Event{ID: "held-1"})
	require.NoError(t, f.in.Publish(wctx, batuta.Message{ID: "msg-poison", Body: []byte("poison")}))
	for f.dlq.Len() == 0 {
		select {
		case <-wctx.Done():
			t.Fatal("the poison message never reached the dead-letter queue")
		case <-time.After(5 * time.Millisecond):
		}
	}
	return f
}

// waitState waits until the run is in state st.
func waitState(t *testing.T, o *batuta.Orchestrator, id string, st batuta.RunState) *batuta.Run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		r, err := o.GetRun(ctx, id)
		require.NoError(t, err)
		if r.State == st {
			return r
		}
		select {
		case <-ctx.Done():
			t.Fatalf("run %s never reached %s: %+v", id, st, r)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// serve mounts the dashboard under /ops/ of a test server.
func serve(t *testing.T, cfg dashboard.Config) *httptest.Server {
	t.Helper()
	if cfg.Authorize == nil && !cfg.UnsafeAllowUnauthenticated {
		cfg.Authorize = dashboard.BasicAuth(user, password)
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	h, err := dashboard.New(cfg)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/ops/", http.StripPrefix("/ops", h))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

func noop(context.Context, *batuta.Input) (any, error) { return nil, nil }
