package batutaotel_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/adapters/batutaotel"
)

// telemetry is an SDK wired to in-memory sinks.
type telemetry struct {
	spans  *tracetest.InMemoryExporter
	reader *sdkmetric.ManualReader
	tp     *sdktrace.TracerProvider
	mp     *sdkmetric.MeterProvider
}

func setup(t testing.TB) (*telemetry, *batutaotel.Hooks) {
	t.Helper()
	tel := &telemetry{spans: tracetest.NewInMemoryExporter(), reader: sdkmetric.NewManualReader()}
	// WithSyncer exports each span as it ends, without a goroutine.
	tel.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(tel.spans))
	tel.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.reader))
	t.Cleanup(func() {
		require.NoError(t, tel.tp.Shutdown(context.Background()))
		require.NoError(t, tel.mp.Shutdown(context.Background()))
	})
	h, err := batutaotel.New(batutaotel.Config{TracerProvider: tel.tp, MeterProvider: tel.mp})
	require.NoError(t, err)
	return tel, h
}

// attrs returns a span's attributes as a map.
func attrs(kvs []attribute.KeyValue) map[attribute.Key]any {
	m := make(map[attribute.Key]any, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value.AsInterface()
	}
	return m
}

// points returns metric name -> encoded attribute set -> value: the sum for
// counters, the count for histograms.
func (tel *telemetry) points(t *testing.T) map[string]map[string]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, tel.reader.Collect(context.Background(), &rm))
	out := map[string]map[string]float64{}
	for _, sm := range rm.ScopeMetrics {
		require.Equal(t, batutaotel.ScopeName, sm.Scope.Name)
		for _, m := range sm.Metrics {
			pts := map[string]float64{}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				require.True(t, d.IsMonotonic, m.Name)
				for _, p := range d.DataPoints {
					pts[p.Attributes.Encoded(attribute.DefaultEncoder())] = float64(p.Value)
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					pts[p.Attributes.Encoded(attribute.DefaultEncoder())] = float64(p.Count)
				}
			default:
				t.Fatalf("metric %s: unexpected data %T", m.Name, m.Data)
			}
			out[m.Name] = pts
		}
	}
	return out
}

// startOrchestrator runs o until the test ends; stop waits for its workers,
// so every hook call has returned once it is done.
func startOrchestrator(t *testing.T, o *batuta.Orchestrator) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestOrchestratorSpansAndMetrics(t *testing.T) {
	t.Parallel()
	tel, h := setup(t)
	o, err := batuta.New(batuta.Config{
		Store:      batuta.NewMemoryStore(batuta.MemoryStoreConfig{}),
		Logger:     slog.New(slog.DiscardHandler),
		NoLogHooks: true,
		Hooks:      []batuta.Hooks{h},
	})
	require.NoError(t, err)

	var bCalls atomic.Int32
	noop := func(context.Context, *batuta.Input) (any, error) { return "ok", nil }
	require.NoError(t, o.Register(&batuta.Workflow{Name: "orders", Tasks: []batuta.Task{
		{Name: "a", Run: noop},
		{Name: "b", Deps: []string{"a"},
			Retry: batuta.RetryPolicy{MaxAttempts: 3, InitialDelay: time.Millisecond, NoJitter: true},
			Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
				// The task's own span must nest under the attempt span.
				_, span := tel.tp.Tracer("task").Start(ctx, "inner b")
				defer span.End()
				if bCalls.Add(1) == 1 {
					return nil, errors.New("flaky")
				}
				return "ok", nil
			}},
		{Name: "c", Deps: []string{"b"}, Run: noop},
	}}))
	stop := startOrchestrator(t, o)

	// Submit under a caller span: the run.started span must be its child.
	ctx, submit := tel.tp.Tracer("caller").Start(context.Background(), "submit")
	runID, err := o.Submit(ctx, "orders", batuta.Event{ID: "evt-1"})
	require.NoError(t, err)
	submit.End()
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	run, err := o.Wait(wctx, runID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, run.State)
	stop() // hooks may still be running for the last completion until the workers return

	byName := map[string][]tracetest.SpanStub{}
	for _, s := range tel.spans.GetSpans() {
		byName[s.Name] = append(byName[s.Name], s)
	}
	require.Len(t, byName["submit"], 1)
	require.Len(t, byName["batuta.run.started orders"], 1)
	require.Len(t, byName["batuta.run.finished orders"], 1)
	require.Len(t, byName["batuta.attempt orders/a"], 1)
	require.Len(t, byName["batuta.attempt orders/b"], 2)
	require.Len(t, byName["batuta.attempt orders/c"], 1)
	require.Len(t, byName["inner b"], 2)
	require.Len(t, tel.spans.GetSpans(), 9)

	started := byName["batuta.run.started orders"][0]
	require.Equal(t, byName["submit"][0].SpanContext.SpanID(), started.Parent.SpanID())
	require.Equal(t, map[attribute.Key]any{
		"batuta.run_id": runID, "batuta.workflow": "orders", "batuta.event_id": "evt-1",
	}, attrs(started.Attributes))

	finished := byName["batuta.run.finished orders"][0]
	require.Equal(t, map[attribute.Key]any{
		"batuta.run_id": runID, "batuta.workflow": "orders", "batuta.state": "succeeded",
	}, attrs(finished.Attributes))
	require.Equal(t, codes.Unset, finished.Status.Code)

	type want struct {
		task    string
		attempt int64
		outcome string
		status  codes.Code
	}
	attempts := map[spanKey]tracetest.SpanStub{}
	for _, name := range []string{"batuta.attempt orders/a", "batuta.attempt orders/b", "batuta.attempt orders/c"} {
		for _, s := range byName[name] {
			a := attrs(s.Attributes)
			attempts[spanKey{a["batuta.task"].(string), a["batuta.attempt"].(int64)}] = s
		}
	}
	for _, w := range []want{
		{"a", 1, "succeeded", codes.Unset},
		{"b", 1, "retry", codes.Error},
		{"b", 2, "succeeded", codes.Unset},
		{"c", 1, "succeeded", codes.Unset},
	} {
		s, ok := attempts[spanKey{w.task, w.attempt}]
		require.True(t, ok, "no span for %s attempt %d", w.task, w.attempt)
		require.Equal(t, map[attribute.Key]any{
			"batuta.run_id": runID, "batuta.workflow": "orders", "batuta.task": w.task,
			"batuta.attempt": w.attempt, "batuta.outcome": w.outcome, "batuta.timed_out": false,
		}, attrs(s.Attributes), "%s attempt %d", w.task, w.attempt)
		require.Equal(t, w.status, s.Status.Code, "%s attempt %d", w.task, w.attempt)
		require.False(t, s.Parent.IsValid(), "attempt spans are roots: the worker context carries no span")
		require.Equal(t, trace.SpanKindInternal, s.SpanKind)
		if w.status == codes.Error {
			require.Equal(t, "flaky", s.Status.Description)
			require.Len(t, s.Events, 1)
			require.Equal(t, "exception", s.Events[0].Name)
		}
	}
	// Each inner span is the child of one b attempt span, in its trace.
	parents := map[trace.SpanID]bool{}
	for _, in := range byName["inner b"] {
		parents[in.Parent.SpanID()] = true
	}
	require.Equal(t, map[trace.SpanID]bool{
		attempts[spanKey{"b", 1}].SpanContext.SpanID(): true,
		attempts[spanKey{"b", 2}].SpanContext.SpanID(): true,
	}, parents)
	for _, in := range byName["inner b"] {
		require.True(t, in.Parent.TraceID() == attempts[spanKey{"b", 1}].SpanContext.TraceID() ||
			in.Parent.TraceID() == attempts[spanKey{"b", 2}].SpanContext.TraceID())
	}

	wf := "batuta.workflow=orders"
	require.Equal(t, map[string]map[string]float64{
		"batuta.runs.started":  {wf: 1},
		"batuta.runs.finished": {"batuta.state=succeeded," + wf: 1},
		"batuta.attempts": {
			"batuta.outcome=succeeded,batuta.task=a," + wf: 1,
			"batuta.outcome=retry,batuta.task=b," + wf:     1,
			"batuta.outcome=succeeded,batuta.task=b," + wf: 1,
			"batuta.outcome=succeeded,batuta.task=c," + wf: 1,
		},
		"batuta.attempt.duration": {
			"batuta.outcome=succeeded,batuta.task=a," + wf: 1,
			"batuta.outcome=retry,batuta.task=b," + wf:     1,
			"batuta.outcome=succeeded,batuta.task=b," + wf: 1,
			"batuta.outcome=succeeded,batuta.task=c," + wf: 1,
		},
	}, tel.points(t))
}

type spanKey struct {
	task    string
	attempt int64
}

// TestAttemptStatus drives the hooks directly for outcomes the
// orchestrator test does not produce.
func TestAttemptStatus(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	for _, tc := range []struct {
		name     string
		outcome  batuta.Outcome
		err      error
		timedOut bool
		status   codes.Code
	}{
		{"succeeded", batuta.OutcomeSucceeded, nil, false, codes.Unset},
		{"failed", batuta.OutcomeFailed, boom, false, codes.Error},
		{"timed out", batuta.OutcomeRetry, context.DeadlineExceeded, true, codes.Error},
		{"canceled", batuta.OutcomeCanceled, context.Canceled, false, codes.Error},
		{"snooze is no failure", batuta.OutcomeSnooze, batuta.Snooze(time.Second), false, codes.Unset},
		{"release is no failure", batuta.OutcomeRelease, errors.New("orchestrator shut down"), false, codes.Unset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tel, h := setup(t)
			start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			a := batuta.AttemptInfo{RunID: "r1", Workflow: "w", Task: "t", Attempt: 2, Started: start}
			ctx := h.AttemptStarted(context.Background(), a)
			require.True(t, trace.SpanFromContext(ctx).IsRecording())
			a.Outcome, a.Err, a.TimedOut, a.Finished = tc.outcome, tc.err, tc.timedOut, start.Add(1500*time.Millisecond)
			h.AttemptFinished(ctx, a)

			spans := tel.spans.GetSpans()
			require.Len(t, spans, 1)
			require.Equal(t, "batuta.attempt w/t", spans[0].Name)
			require.Equal(t, tc.status, spans[0].Status.Code)
			got := attrs(spans[0].Attributes)
			require.Equal(t, string(tc.outcome), got["batuta.outcome"])
			require.Equal(t, tc.timedOut, got["batuta.timed_out"])
			require.Equal(t, int64(2), got["batuta.attempt"])

			var rm metricdata.ResourceMetrics
			require.NoError(t, tel.reader.Collect(context.Background(), &rm))
			var hist *metricdata.Histogram[float64]
			for _, m := range rm.ScopeMetrics[0].Metrics {
				if m.Name == "batuta.attempt.duration" {
					d := m.Data.(metricdata.Histogram[float64])
					hist = &d
					require.Equal(t, "s", m.Unit)
				}
			}
			require.NotNil(t, hist)
			require.Len(t, hist.DataPoints, 1)
			require.Equal(t, 1.5, hist.DataPoints[0].Sum, "duration comes from AttemptInfo, in seconds")
			require.Equal(t, batutaotel.DefaultDurationBuckets, hist.DataPoints[0].Bounds)
		})
	}
}

func TestRunFinishedStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		state  batuta.RunState
		status codes.Code
	}{
		{batuta.RunSucceeded, codes.Unset},
		{batuta.RunFailed, codes.Error},
		{batuta.RunCanceled, codes.Unset},
	} {
		t.Run(string(tc.state), func(t *testing.T) {
			t.Parallel()
			tel, h := setup(t)
			h.RunFinished(context.Background(), batuta.RunInfo{RunID: "r1", Workflow: "w", State: tc.state})
			spans := tel.spans.GetSpans()
			require.Len(t, spans, 1)
			require.Equal(t, "batuta.run.finished w", spans[0].Name)
			require.Equal(t, tc.status, spans[0].Status.Code)
			require.False(t, spans[0].Parent.IsValid())
			require.Equal(t, map[string]map[string]float64{
				"batuta.runs.finished": {"batuta.state=" + string(tc.state) + ",batuta.workflow=w": 1},
			}, tel.points(t))
		})
	}
}

// TestStackedHooks: a hook installed after this one may put its own span in
// the context; AttemptFinished must still end this one's span.
func TestStackedHooks(t *testing.T) {
	t.Parallel()
	tel, h1 := setup(t)
	h2, err := batutaotel.New(batutaotel.Config{TracerProvider: tel.tp, MeterProvider: tel.mp})
	require.NoError(t, err)
	a := batuta.AttemptInfo{RunID: "r1", Workflow: "w", Task: "t", Attempt: 1}
	ctx := h2.AttemptStarted(h1.AttemptStarted(context.Background(), a), a)
	a.Outcome = batuta.OutcomeSucceeded
	h1.AttemptFinished(ctx, a)
	require.Len(t, tel.spans.GetSpans(), 1, "h1 ended its own span only")
	h2.AttemptFinished(ctx, a)
	spans := tel.spans.GetSpans()
	require.Len(t, spans, 2)
	require.Equal(t, spans[0].SpanContext.SpanID(), spans[1].Parent.SpanID(), "h1's span (ended first) is the parent of h2's")
}

// TestConcurrentUse runs hooks from many goroutines; -race checks them.
func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	tel, h := setup(t)
	const goroutines, each = 8, 50
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				run := fmt.Sprintf("r%d-%d", g, i)
				h.RunStarted(context.Background(), batuta.RunInfo{RunID: run, Workflow: "w"})
				a := batuta.AttemptInfo{RunID: run, Workflow: "w", Task: "t", Attempt: 1}
				ctx := h.AttemptStarted(context.Background(), a)
				a.Outcome = batuta.OutcomeSucceeded
				h.AttemptFinished(ctx, a)
				h.RunFinished(context.Background(), batuta.RunInfo{RunID: run, Workflow: "w", State: batuta.RunSucceeded})
			}
		})
	}
	wg.Wait()
	require.Len(t, tel.spans.GetSpans(), 3*goroutines*each)
	pts := tel.points(t)
	require.Equal(t, float64(goroutines*each), pts["batuta.runs.started"]["batuta.workflow=w"])
	require.Equal(t, float64(goroutines*each), pts["batuta.attempts"]["batuta.outcome=succeeded,batuta.task=t,batuta.workflow=w"])
}

// TestNoopProviders: with the global (no-op) providers the hooks run, keep
// no span and return the context's span unchanged.
func TestNoopProviders(t *testing.T) {
	t.Parallel()
	h, err := batutaotel.New(batutaotel.Config{})
	require.NoError(t, err)
	a := batuta.AttemptInfo{RunID: "r1", Workflow: "w", Task: "t", Attempt: 1}
	h.RunStarted(context.Background(), batuta.RunInfo{RunID: "r1", Workflow: "w"})
	ctx := h.AttemptStarted(context.Background(), a)
	require.False(t, trace.SpanFromContext(ctx).IsRecording())
	require.False(t, trace.SpanContextFromContext(ctx).IsValid())
	a.Outcome, a.Err = batuta.OutcomeFailed, errors.New("boom")
	h.AttemptFinished(ctx, a)
	h.RunFinished(context.Background(), batuta.RunInfo{RunID: "r1", Workflow: "w", State: batuta.RunFailed})
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		buckets []float64
		field   string
	}{
		{"negative", []float64{-1, 1}, "DurationBuckets[0]"},
		{"not increasing", []float64{1, 2, 2}, "DurationBuckets[2]"},
		{"decreasing", []float64{1, 0.5}, "DurationBuckets[1]"},
		{"NaN", []float64{0.1, math.NaN()}, "DurationBuckets[1]"},
		{"Inf", []float64{math.Inf(1)}, "DurationBuckets[0]"},
		{"empty is one bucket", []float64{}, ""},
		{"custom", []float64{0, 1, 60}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, err := batutaotel.New(batutaotel.Config{DurationBuckets: tc.buckets})
			if tc.field == "" {
				require.NoError(t, err)
				require.NotNil(t, h)
				return
			}
			require.ErrorIs(t, err, batuta.ErrInvalidConfig)
			var ce *batuta.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.field, ce.Field)
			require.Nil(t, h)
		})
	}
}
