package batuta_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// TestFlowValidation: every bad flow-control setting is refused at Register
// with an ErrInvalidWorkflow naming the field, and nothing is registered.
func TestFlowValidation(t *testing.T) {
	t.Parallel()
	wf := func(mod func(w *batuta.Workflow)) *batuta.Workflow {
		w := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}
		mod(w)
		return w
	}
	cases := []struct {
		name string
		wf   *batuta.Workflow
		want string
	}{
		{"max 0", wf(func(w *batuta.Workflow) { w.Concurrency = &batuta.Concurrency{} }), "Workflow.Concurrency.Max must be at least 1 (got 0)"},
		{"unknown strategy", wf(func(w *batuta.Workflow) { w.Concurrency = &batuta.Concurrency{Max: 1, Strategy: 9} }), "Workflow.Concurrency.Strategy: unknown strategy ConcurrencyStrategy(9)"},
		{"task max", wf(func(w *batuta.Workflow) { w.Tasks[0].Concurrency = &batuta.Concurrency{Max: -1} }), "Task.Concurrency.Max must be at least 1 (got -1)"},
		{"task strategy", wf(func(w *batuta.Workflow) {
			w.Tasks[0].Concurrency = &batuta.Concurrency{Max: 1, Strategy: batuta.ConcurrencyCancelNewest}
		}), "Task.Concurrency.Strategy must be batuta.ConcurrencyQueue for a task (got CancelNewest)"},
		{"rate name", wf(func(w *batuta.Workflow) { w.Tasks[0].RateLimit = &batuta.RateLimit{Limit: 1, Per: time.Second} }), "Task.RateLimit.Name is empty"},
		{"rate bad name", wf(func(w *batuta.Workflow) {
			w.Tasks[0].RateLimit = &batuta.RateLimit{Name: "a b", Limit: 1, Per: time.Second}
		}), "Task.RateLimit.Name must be"},
		{"rate limit", wf(func(w *batuta.Workflow) { w.Tasks[0].RateLimit = &batuta.RateLimit{Name: "api", Per: time.Second} }), "Task.RateLimit.Limit must be at least 1 (got 0)"},
		{"rate per", wf(func(w *batuta.Workflow) { w.Tasks[0].RateLimit = &batuta.RateLimit{Name: "api", Limit: 1} }), "Task.RateLimit.Per must be positive (got 0s)"},
		{"rate per negative", wf(func(w *batuta.Workflow) {
			w.Tasks[0].RateLimit = &batuta.RateLimit{Name: "api", Limit: 1, Per: -time.Second}
		}), "Task.RateLimit.Per must be positive (got -1s)"},
		{"rate burst", wf(func(w *batuta.Workflow) {
			w.Tasks[0].RateLimit = &batuta.RateLimit{Name: "api", Limit: 1, Per: time.Second, Burst: -1}
		}), "Task.RateLimit.Burst must not be negative (got -1)"},
		{"rate too fine", wf(func(w *batuta.Workflow) {
			w.Tasks[0].RateLimit = &batuta.RateLimit{Name: "api", Limit: 10, Per: time.Nanosecond}
		}), "finer than a nanosecond"},
		{"rate mismatch", &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
			{Name: "a", Run: noop, RateLimit: &batuta.RateLimit{Name: "api", Limit: 1, Per: time.Second}},
			{Name: "b", Run: noop, RateLimit: &batuta.RateLimit{Name: "api", Limit: 2, Per: time.Second}},
		}}, `Task.RateLimit "api": Limit 2 per 1s (burst 0) differs`},
		{"window 0", wf(func(w *batuta.Workflow) { w.Debounce = &batuta.Debounce{} }), "Workflow.Debounce.Window must be positive (got 0s)"},
		{"window > maxwait", wf(func(w *batuta.Workflow) {
			w.Debounce = &batuta.Debounce{Window: time.Minute, MaxWait: time.Second}
		}), "Workflow.Debounce.Window (1m0s) is longer than MaxWait (1s)"},
		{"maxwait negative", wf(func(w *batuta.Workflow) {
			w.Debounce = &batuta.Debounce{Window: time.Second, MaxWait: -time.Second}
		}), "Workflow.Debounce.MaxWait must not be negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := batuta.New(batuta.Config{Logger: quiet})
			require.NoError(t, err)
			err = o.Register(tc.wf)
			require.ErrorIs(t, err, batuta.ErrInvalidWorkflow)
			require.Contains(t, err.Error(), tc.want)
			_, err = o.Submit(context.Background(), tc.wf.Name, batuta.Event{})
			require.ErrorIs(t, err, batuta.ErrUnknownWorkflow, "nothing is registered")
		})
	}
}

// TestRateLimitSharedAcrossWorkflows: two workflows declaring one rate limit
// Name with different numbers are refused, since they share one limit.
func TestRateLimitSharedAcrossWorkflows(t *testing.T) {
	t.Parallel()
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	rl := func(limit int) *batuta.Workflow {
		return &batuta.Workflow{Name: "w" + strings.Repeat("x", limit), Tasks: []batuta.Task{
			{Name: "a", Run: noop, RateLimit: &batuta.RateLimit{Name: "api", Limit: limit, Per: time.Second}},
		}}
	}
	require.NoError(t, o.Register(rl(1)))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "same", Tasks: []batuta.Task{
		{Name: "a", Run: noop, RateLimit: &batuta.RateLimit{Name: "api", Limit: 1, Per: time.Second, Burst: 1}}, // Burst 0 means 1
	}}))
	err = o.Register(rl(2))
	require.ErrorIs(t, err, batuta.ErrInvalidWorkflow)
	require.Contains(t, err.Error(), "declared by another registered workflow")
}

// TestSubmitOptionErrors: bad options and panicking key functions fail the
// Submit with a matchable error, and nothing is stored.
func TestSubmitOptionErrors(t *testing.T) {
	t.Parallel()
	ctx := waitCtx(t)
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	boom := func(batuta.Event) string { panic("boom") }
	require.NoError(t, o.Register(&batuta.Workflow{Name: "conc", Concurrency: &batuta.Concurrency{Key: boom, Max: 1}, Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "deb", Debounce: &batuta.Debounce{Key: boom, Window: time.Second}, Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "tconc", Tasks: []batuta.Task{{Name: "a", Run: noop, Concurrency: &batuta.Concurrency{Key: boom, Max: 1}}}}))

	for _, opts := range [][]batuta.SubmitOption{
		{batuta.StartAfter(-time.Second)},
		{batuta.WithPriority(1 << 40)},
		{{}},
	} {
		_, err := o.Submit(ctx, "w", batuta.Event{ID: "x"}, opts...)
		require.ErrorIs(t, err, batuta.ErrInvalidConfig)
		_, err = o.SubmitMany(ctx, "w", []batuta.Event{{ID: "y"}}, opts...)
		require.ErrorIs(t, err, batuta.ErrInvalidConfig)
	}
	_, err = o.Submit(ctx, "w", batuta.Event{}, batuta.StartAfter(-time.Second))
	require.ErrorContains(t, err, "StartAfter (option 0): the delay must not be negative (got -1s)")
	for _, wf := range []string{"conc", "deb", "tconc"} {
		_, err := o.Submit(ctx, wf, batuta.Event{ID: "x"})
		require.ErrorIs(t, err, batuta.ErrInvalidPayload, wf)
		var pe *batuta.PanicError
		require.ErrorAs(t, err, &pe, wf)
		require.ErrorContains(t, err, "panicked on event \"x\"", wf)
	}
	// SubmitMany checks every event before storing any.
	_, err = o.SubmitMany(ctx, "w", []batuta.Event{{ID: "ok"}, {ID: "bad", Subject: "\x00"}})
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
	require.ErrorContains(t, err, "event 1")
	runs, err := o.ListRuns(ctx, batuta.RunFilter{})
	require.NoError(t, err)
	require.Empty(t, runs, "nothing was stored")

	for _, call := range []func(context.Context, string) error{o.Pause, o.Resume} {
		require.ErrorIs(t, call(ctx, "nope"), batuta.ErrUnknownWorkflow)
	}
	_, err = o.SubmitMany(ctx, "nope", []batuta.Event{{}})
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	ids, err := o.SubmitMany(ctx, "w", nil)
	require.NoError(t, err)
	require.Empty(t, ids)
}

// TestBindSubmitWithError: an error from SubmitWith fails the fire with an
// ErrInvalidPayload, and no run is created.
func TestBindSubmitWithError(t *testing.T) {
	t.Parallel()
	ctx := waitCtx(t)
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	fired := make(chan error, 1)
	trig := batuta.TriggerFunc(func(ctx context.Context, fire batuta.FireFunc) error {
		fired <- fire(ctx, batuta.Event{ID: "e1"})
		<-ctx.Done()
		return nil
	})
	require.NoError(t, o.Bind("w", trig, batuta.SubmitWith(func(batuta.Event) ([]batuta.SubmitOption, error) {
		return nil, errors.New("no send_at column")
	})))
	start(t, o)
	select {
	case err := <-fired:
		require.ErrorIs(t, err, batuta.ErrInvalidPayload)
		require.ErrorContains(t, err, "SubmitWith: no send_at column")
	case <-ctx.Done():
		t.Fatal("the trigger never fired")
	}
	_, err = o.Store().FindRun(ctx, "w", "e1")
	require.ErrorIs(t, err, batuta.ErrRunNotFound)
}
