package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/stretchr/testify/require"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// setup returns an orchestrator running until the test ends.
func setup(t *testing.T, cfg batuta.Config, wfs ...*batuta.Workflow) *batuta.Orchestrator {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	o, err := batuta.New(cfg)
	require.NoError(t, err)
	for _, wf := range wfs {
		require.NoError(t, o.Register(wf))
	}
	start(t, o)
	return o
}

func start(t *testing.T, o *batuta.Orchestrator) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Error("Run did not return within 30s of cancel")
		}
	})
}

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func noop(context.Context, *batuta.Input) (any, error) { return nil, nil }

func TestDiamondPassesData(t *testing.T) {
	t.Parallel()
	type order struct {
		ID    int `json:"id"`
		Total int `json:"total"`
	}
	wf := &batuta.Workflow{Name: "order", Tasks: []batuta.Task{
		{Name: "validate", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			o, err := batuta.EventData[order](in)
			if err != nil {
				return nil, err
			}
			return o, nil
		}},
		{Name: "charge", Deps: []string{"validate"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			o, err := batuta.Output[order](in, "validate")
			return o.Total * 2, err
		}},
		{Name: "email", Deps: []string{"validate"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			o, err := batuta.Output[order](in, "validate")
			return fmt.Sprintf("mail %d", o.ID), err
		}},
		{Name: "done", Deps: []string{"charge", "email"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			c, err := batuta.Output[int](in, "charge")
			if err != nil {
				return nil, err
			}
			e, err := batuta.Output[string](in, "email")
			return fmt.Sprintf("%d/%s", c, e), err
		}},
	}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "order", batuta.Event{ID: "o-1", Data: []byte(`{"id":7,"total":50}`)})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	require.Equal(t, "100/mail 7", r.Task("done").Output)
	for _, tr := range r.Tasks {
		require.Equal(t, batuta.TaskSucceeded, tr.State, tr.Name)
		require.Len(t, tr.Attempts, 1)
	}
}

func TestRegisterRejectsBadWorkflows(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		wf   *batuta.Workflow
		want string
	}{
		{"nil", nil, "nil workflow"},
		{"empty", &batuta.Workflow{Name: "w"}, "no tasks"},
		{"bad name", &batuta.Workflow{Name: "w x", Tasks: []batuta.Task{{Name: "a", Run: noop}}}, "name must be"},
		{"hostile name", &batuta.Workflow{Name: `w"; DROP TABLE x; --`, Tasks: []batuta.Task{{Name: "a", Run: noop}}}, "name must be"},
		{"nil func", &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a"}}}, `task "a": nil Run func: Task.Run is nil; set it to a func(ctx context.Context, in *batuta.Input) (any, error)`},
		{"duplicate", &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}, {Name: "a", Run: noop}}}, `task "a": duplicate task name`},
		{"unknown dep", &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop, Deps: []string{"ghost"}}}}, `unknown dependency "ghost"`},
		{"self dep", &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop, Deps: []string{"a"}}}}, "depends on itself"},
		{"cycle", &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
			{Name: "a", Run: noop, Deps: []string{"c"}}, {Name: "b", Run: noop, Deps: []string{"a"}}, {Name: "c", Run: noop, Deps: []string{"b"}}}},
			"dependency cycle: a -> b -> c -> a"},
		{"negative timeout", &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop, Timeout: -time.Second}}}, "Task.Timeout must not be negative (got -1s)"},
		{"negative wf timeout", &batuta.Workflow{Name: "w", Timeout: -1, Tasks: []batuta.Task{{Name: "a", Run: noop}}}, "Workflow.Timeout must not be negative"},
		{"negative retries", &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop, Retry: batuta.RetryPolicy{MaxAttempts: -1}}}}, "Task.Retry.MaxAttempts must not be negative (got -1); use e.g. MaxAttempts: 5"},
		{"bad multiplier", &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop, Retry: batuta.RetryPolicy{Multiplier: 0.5}}}}, "Retry.Multiplier"},
		{"bad join rule", &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop, When: 42}}}, "unknown join rule"},
		{"zero concurrency", &batuta.Workflow{Name: "w", Concurrency: &batuta.Concurrency{}, Tasks: []batuta.Task{{Name: "a", Run: noop}}}, "Workflow.Concurrency.Max must be at least 1 (got 0)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := batuta.New(batuta.Config{Logger: quiet})
			require.NoError(t, err)
			err = o.Register(tc.wf)
			require.ErrorIs(t, err, batuta.ErrInvalidWorkflow)
			require.ErrorContains(t, err, tc.want)
			_, err = o.Submit(context.Background(), "w", batuta.Event{})
			require.ErrorIs(t, err, batuta.ErrUnknownWorkflow, "nothing may be registered")
		})
	}
	t.Run("twice", func(t *testing.T) {
		o, err := batuta.New(batuta.Config{Logger: quiet})
		require.NoError(t, err)
		wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}
		require.NoError(t, o.Register(wf))
		require.ErrorContains(t, o.Register(wf), "already registered")
	})
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for _, cfg := range []batuta.Config{{Workers: -1}, {MaxPayloadBytes: -1}, {ShutdownGrace: -1}, {LeaseDuration: -1}, {Hooks: []batuta.Hooks{nil}}} {
		_, err := batuta.New(cfg)
		require.ErrorIs(t, err, batuta.ErrInvalidConfig)
		var ce *batuta.ConfigError
		require.ErrorAs(t, err, &ce)
		require.NotEmpty(t, ce.Field)
	}
}

func TestSubmitUnknownWorkflowAndBadEvents(t *testing.T) {
	t.Parallel()
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}
	o := setup(t, batuta.Config{MaxPayloadBytes: 1024}, wf)
	ctx := waitCtx(t)
	_, err := o.Submit(ctx, "nope", batuta.Event{})
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)

	_, err = o.Submit(ctx, "w", batuta.Event{ID: "big", Data: make([]byte, 1025)})
	require.ErrorIs(t, err, batuta.ErrPayloadTooLarge)
	var pe *batuta.PayloadTooLargeError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, 1025, pe.Size)
	require.Equal(t, 1024, pe.Limit)
	_, err = o.Submit(ctx, "w", batuta.Event{ID: "meta", Metadata: map[string]string{"k": strings.Repeat("x", 1024)}})
	require.ErrorIs(t, err, batuta.ErrPayloadTooLarge)
	_, err = o.Submit(ctx, "w", batuta.Event{ID: "nul\x00"})
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
	_, err = o.Submit(ctx, "w", batuta.Event{ID: "utf", Type: "\xff\xfe"})
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
	runs, err := o.ListRuns(ctx, batuta.RunFilter{})
	require.NoError(t, err)
	require.Empty(t, runs, "refused events must store nothing")
}

func TestRetriesThenSucceeds(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "flaky", Retry: batuta.RetryPolicy{MaxAttempts: 4, InitialDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond},
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			if n := calls.Add(1); n < 3 {
				return nil, fmt.Errorf("transient %d", n)
			}
			return in.Attempt(), nil
		}}}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	tr := r.Task("flaky")
	require.Equal(t, 3, tr.Output)
	require.Len(t, tr.Attempts, 3)
	require.Equal(t, batuta.OutcomeRetry, tr.Attempts[0].Outcome)
	require.Equal(t, "transient 1", tr.Attempts[0].Error)
	require.Equal(t, 3, tr.Attempts[2].Number)
}

func TestPermanentErrorSkipsDependentsAndRunsFailureHandlers(t *testing.T) {
	t.Parallel()
	var ran sync.Map
	mark := func(name string) batuta.TaskFunc {
		return func(context.Context, *batuta.Input) (any, error) { ran.Store(name, true); return name, nil }
	}
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "validate", Run: mark("validate")},
		{Name: "charge", Deps: []string{"validate"}, Retry: batuta.RetryPolicy{MaxAttempts: 5}, Run: func(context.Context, *batuta.Input) (any, error) {
			return nil, batuta.Permanent(errors.New("card declined"))
		}},
		{Name: "ship", Deps: []string{"charge"}, Run: mark("ship")},
		{Name: "after-ship", Deps: []string{"ship"}, Run: mark("after-ship")},
		{Name: "refund-alert", Deps: []string{"charge"}, When: batuta.OneFailed, Run: mark("refund-alert")},
		{Name: "cleanup", Deps: []string{"ship", "refund-alert"}, When: batuta.AllDone, Run: mark("cleanup")},
		{Name: "none-failed", Deps: []string{"validate"}, When: batuta.NoneFailed, Run: mark("none-failed")},
		{Name: "all-failed", Deps: []string{"charge"}, When: batuta.AllFailed, Run: mark("all-failed")},
		{Name: "one-ok", Deps: []string{"charge", "validate"}, When: batuta.OneSucceeded, Run: mark("one-ok")},
	}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	require.Contains(t, r.Error, "card declined")
	want := map[string]batuta.TaskState{
		"validate": batuta.TaskSucceeded, "charge": batuta.TaskFailed, "ship": batuta.TaskUpstreamFailed,
		"after-ship": batuta.TaskUpstreamFailed, "refund-alert": batuta.TaskSucceeded, "cleanup": batuta.TaskSucceeded,
		"none-failed": batuta.TaskSucceeded, "all-failed": batuta.TaskSucceeded, "one-ok": batuta.TaskSucceeded,
	}
	for name, st := range want {
		require.Equal(t, st, r.Task(name).State, name)
		_, did := ran.Load(name)
		require.Equal(t, st == batuta.TaskSucceeded && name != "charge", did, "ran %s", name)
	}
	require.Len(t, r.Task("charge").Attempts, 1, "a permanent error is not retried")
}

// snoozeHook counts the attempts that ended in a snooze.
type snoozeHook struct {
	batuta.NopHooks
	n atomic.Int32
}

func (h *snoozeHook) AttemptFinished(_ context.Context, a batuta.AttemptInfo) {
	if a.Outcome == batuta.OutcomeSnooze {
		h.n.Add(1)
	}
}

// TestSnoozeSpendsNoAttempt: snoozes run the task again without spending
// its single attempt. A task polling by snoozing keeps one record for its
// snoozes in a row (counted in Attempt.Snoozes), while each snooze still
// reaches the hooks.
func TestSnoozeSpendsNoAttempt(t *testing.T) {
	t.Parallel()
	const snoozes = 50
	var calls atomic.Int32
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "wait-for-stock", Retry: batuta.RetryPolicy{MaxAttempts: 1},
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			if calls.Add(1) <= snoozes {
				return nil, batuta.Snooze(time.Millisecond)
			}
			return "ok", nil
		}}}}
	h := &snoozeHook{}
	o := setup(t, batuta.Config{Hooks: []batuta.Hooks{h}}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	at := r.Task("wait-for-stock").Attempts
	require.Len(t, at, 2, "the snoozes are one record: %+v", at)
	for _, a := range at {
		require.Equal(t, 1, a.Number, "snoozes do not spend the single attempt")
	}
	require.Equal(t, batuta.OutcomeSnooze, at[0].Outcome)
	require.Equal(t, snoozes, at[0].Snoozes)
	require.Equal(t, batuta.OutcomeSucceeded, at[1].Outcome)
	require.EqualValues(t, snoozes, h.n.Load(), "every snooze reaches the hooks")
	require.Equal(t, snoozes+1, r.Task("wait-for-stock").AttemptCount(), "each snooze ran the body")
}

func TestPanicIsAFailedAttemptWithStack(t *testing.T) {
	t.Parallel()
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "boom", Retry: batuta.RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond},
		Run: func(context.Context, *batuta.Input) (any, error) {
			var m map[string]int
			m["x"] = 1 //nolint:staticcheck // SA5000: the nil map write is the panic under test
			return nil, nil
		}}}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	tr := r.Task("boom")
	require.Len(t, tr.Attempts, 2, "a panic is retried like any error")
	require.Contains(t, tr.Error, "task panicked: assignment to entry in nil map")
	require.Contains(t, tr.Error, "orchestrator_test.go", "the stack is in the error")
}

func TestTaskIgnoringCtxTimesOut(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // let the abandoned goroutine end before goleak looks
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "stuck", Timeout: 30 * time.Millisecond, Retry: batuta.RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond},
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				<-release // ignores ctx
				return nil, nil
			}},
		{Name: "polite", Timeout: 30 * time.Millisecond, Retry: batuta.RetryPolicy{MaxAttempts: 1},
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			}},
	}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	stuck := r.Task("stuck")
	require.Equal(t, batuta.TaskFailed, stuck.State)
	require.Len(t, stuck.Attempts, 2)
	for _, a := range stuck.Attempts {
		require.Equal(t, batuta.OutcomeTimedOut, a.Outcome)
		require.Contains(t, a.Error, "timeout")
	}
	polite := r.Task("polite")
	require.Equal(t, batuta.OutcomeTimedOut, polite.Attempts[0].Outcome)
}

func TestWorkflowTimeout(t *testing.T) {
	t.Parallel()
	wf := &batuta.Workflow{Name: "w", Timeout: 50 * time.Millisecond, Tasks: []batuta.Task{
		{Name: "slow", Retry: batuta.RetryPolicy{MaxAttempts: 5}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}},
		{Name: "next", Deps: []string{"slow"}, Run: noop},
	}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	require.Len(t, r.Task("slow").Attempts, 1, "a workflow timeout is not retried")
	require.Contains(t, r.Task("slow").Error, "workflow timeout")
	require.Equal(t, batuta.TaskUpstreamFailed, r.Task("next").State)
}

func TestCancelWideDAG(t *testing.T) {
	t.Parallel()
	const width = 40
	var started atomic.Int32
	tasks := []batuta.Task{{Name: "root", Run: noop}}
	for i := 0; i < width; i++ {
		tasks = append(tasks, batuta.Task{Name: fmt.Sprintf("t%d", i), Deps: []string{"root"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			started.Add(1)
			<-ctx.Done()
			return nil, ctx.Err()
		}})
	}
	tasks = append(tasks, batuta.Task{Name: "join", Deps: []string{"t0", "t1"}, Run: noop})
	o := setup(t, batuta.Config{Workers: 16}, &batuta.Workflow{Name: "wide", Tasks: tasks})
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "wide", batuta.Event{})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return started.Load() == 16 }, 10*time.Second, time.Millisecond)
	require.NoError(t, o.Cancel(ctx, id))
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, r.State)
	require.Equal(t, batuta.TaskSucceeded, r.Task("root").State)
	for _, tr := range r.Tasks[1:] {
		require.Equal(t, batuta.TaskCanceled, tr.State, tr.Name)
	}
	require.EqualValues(t, 16, started.Load(), "no task starts after cancel")
	require.NoError(t, o.Cancel(ctx, id), "canceling a finished run is a no-op")
	require.ErrorIs(t, o.Cancel(ctx, "no-such-run"), batuta.ErrRunNotFound)
}

func TestDuplicateEventIDsMakeOneRun(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: func(context.Context, *batuta.Input) (any, error) {
		runs.Add(1)
		return nil, nil
	}}}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	ids := make([]string, 100)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := o.Submit(ctx, "w", batuta.Event{ID: "same-key"})
			require.NoError(t, err)
			ids[i] = id
		}()
	}
	wg.Wait()
	for _, id := range ids {
		require.Equal(t, ids[0], id)
	}
	r, err := o.Wait(ctx, ids[0])
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.EqualValues(t, 1, runs.Load())
}

func TestBusyUnderFlood(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
		select {
		case <-gate:
		case <-ctx.Done():
		}
		return nil, nil
	}}}}
	o := setup(t, batuta.Config{MaxInFlightRuns: 5}, wf)
	ctx := waitCtx(t)
	var accepted []string
	busy := 0
	for i := 0; i < 50; i++ {
		id, err := o.Submit(ctx, "w", batuta.Event{ID: fmt.Sprint(i)})
		if errors.Is(err, batuta.ErrBusy) {
			busy++
			continue
		}
		require.NoError(t, err)
		accepted = append(accepted, id)
	}
	require.Len(t, accepted, 5)
	require.Equal(t, 45, busy)
	// SubmitBlocking waits for room instead.
	done := make(chan string, 1)
	go func() {
		id, err := o.SubmitBlocking(ctx, "w", batuta.Event{ID: "patient"})
		require.NoError(t, err)
		done <- id
	}()
	close(gate)
	var last string
	select {
	case last = <-done:
	case <-ctx.Done():
		t.Fatal("SubmitBlocking never got room")
	}
	for _, id := range append(accepted, last) {
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	// Blocking submit gives up with ctx.
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	_, err := o.SubmitBlocking(short, "nope", batuta.Event{})
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
}

func TestOutputTypeMismatch(t *testing.T) {
	t.Parallel()
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "a", Run: func(context.Context, *batuta.Input) (any, error) { return 42, nil }},
		{Name: "b", Deps: []string{"a"}, Retry: batuta.RetryPolicy{MaxAttempts: 1}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			_, err := batuta.Output[string](in, "a")
			if !errors.Is(err, batuta.ErrTypeMismatch) {
				return nil, fmt.Errorf("want type mismatch, got %w", err)
			}
			if _, err := batuta.Output[int](in, "zzz"); err == nil {
				return nil, errors.New("non-dependency output read")
			}
			_, err = batuta.EventData[map[string]int](in)
			return nil, err
		}},
	}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{Data: []byte(`{not json`)})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Contains(t, r.Task("b").Error, "invalid payload")
}

func TestShutdownReleasesInFlightWithoutSpendingAttempts(t *testing.T) {
	t.Parallel()
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	var started atomic.Int32
	var firstRun atomic.Bool
	firstRun.Store(true)
	mk := func() *batuta.Workflow {
		return &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Retry: batuta.RetryPolicy{MaxAttempts: 1},
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				if firstRun.Load() {
					started.Add(1)
					<-ctx.Done() // held until shutdown cancels
					return nil, ctx.Err()
				}
				return in.Attempt(), nil
			}}}}
	}
	o1, err := batuta.New(batuta.Config{Store: store, Logger: quiet, Workers: 50, ShutdownGrace: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, o1.Register(mk()))
	ctx := waitCtx(t)
	var ids []string
	for i := 0; i < 50; i++ {
		id, err := o1.Submit(ctx, "w", batuta.Event{})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- o1.Run(runCtx) }()
	require.Eventually(t, func() bool { return started.Load() == 50 }, 10*time.Second, time.Millisecond)
	stop()
	require.NoError(t, <-done)
	firstRun.Store(false)
	for _, id := range ids {
		r, err := store.GetRun(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.TaskPending, r.Task("a").State, "handed back")
		require.Empty(t, r.Task("a").Attempts, "no attempt spent")
	}
	o2 := setup(t, batuta.Config{Store: store}, mk())
	for _, id := range ids {
		r, err := o2.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
		require.Equal(t, 1, r.Task("a").Output, "the single attempt was still available")
	}
}

func TestStartStopCycles(t *testing.T) {
	t.Parallel()
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}, {Name: "b", Deps: []string{"a"}, Run: noop}}}
	o, err := batuta.New(batuta.Config{Logger: quiet, ShutdownGrace: time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, o.Register(wf))
	trig := batutatest.NewPushTrigger()
	require.NoError(t, o.Bind("w", trig))
	for i := 0; i < 200; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- o.Run(ctx) }()
		if i%20 == 0 {
			require.NoError(t, trig.Push(waitCtx(t), batuta.Event{ID: fmt.Sprint(i)}))
		}
		cancel()
		require.NoError(t, <-done)
	}
}

func TestTriggerRestartedAfterFailure(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	trig := batuta.TriggerFunc(func(ctx context.Context, fire batuta.FireFunc) error {
		if calls.Add(1) == 1 {
			return errors.New("broker unreachable")
		}
		if err := fire(ctx, batuta.Event{ID: "after-restart"}); err != nil {
			return err
		}
		<-ctx.Done()
		return ctx.Err()
	})
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(wf))
	require.NoError(t, o.Bind("w", trig))
	require.ErrorIs(t, o.Bind("nope", trig), batuta.ErrUnknownWorkflow)
	start(t, o)
	ctx := waitCtx(t)
	require.Eventually(t, func() bool {
		r, err := o.Store().FindRun(ctx, "w", "after-restart")
		return err == nil && r.State == batuta.RunSucceeded
	}, 10*time.Second, 5*time.Millisecond)
	require.EqualValues(t, 2, calls.Load())
}

type countingHooks struct {
	batuta.NopHooks
	runs, finished, attempts, attemptsDone atomic.Int32
}

func (h *countingHooks) RunStarted(context.Context, batuta.RunInfo)  { h.runs.Add(1) }
func (h *countingHooks) RunFinished(context.Context, batuta.RunInfo) { h.finished.Add(1) }
func (h *countingHooks) AttemptStarted(ctx context.Context, _ batuta.AttemptInfo) context.Context {
	h.attempts.Add(1)
	return ctx
}
func (h *countingHooks) AttemptFinished(context.Context, batuta.AttemptInfo) { h.attemptsDone.Add(1) }

func TestHooksAndConcurrencyCap(t *testing.T) {
	t.Parallel()
	var cur, high atomic.Int32
	h := &countingHooks{}
	wf := &batuta.Workflow{Name: "w", Concurrency: &batuta.Concurrency{Max: 3}, Tasks: []batuta.Task{{Name: "a", Run: func(context.Context, *batuta.Input) (any, error) {
		n := cur.Add(1)
		for {
			m := high.Load()
			if n <= m || high.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(time.Millisecond) // work, not synchronisation
		cur.Add(-1)
		return nil, nil
	}}}}
	o := setup(t, batuta.Config{Hooks: []batuta.Hooks{h}, Workers: 32}, wf)
	ctx := waitCtx(t)
	var ids []string
	for i := 0; i < 60; i++ {
		id, err := o.Submit(ctx, "w", batuta.Event{})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	for _, id := range ids {
		_, err := o.Wait(ctx, id)
		require.NoError(t, err)
	}
	require.LessOrEqual(t, high.Load(), int32(3))
	require.EqualValues(t, 60, h.runs.Load())
	require.Eventually(t, func() bool { return h.finished.Load() == 60 && h.attemptsDone.Load() == 60 }, 5*time.Second, time.Millisecond)
	require.EqualValues(t, 60, h.attempts.Load())
}

// TestEachTaskRunsOnce: under load, with inline continuation and the
// dispatcher racing for the same ready tasks, no task body runs twice.
func TestEachTaskRunsOnce(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	count := map[string]int{}
	body := func(ctx context.Context, in *batuta.Input) (any, error) {
		mu.Lock()
		count[in.IdempotencyKey()]++
		mu.Unlock()
		return nil, nil
	}
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "a", Run: body}, {Name: "b", Deps: []string{"a"}, Run: body}, {Name: "c", Deps: []string{"a"}, Run: body},
		{Name: "d", Deps: []string{"b", "c"}, Run: body}, {Name: "e", Deps: []string{"d"}, When: batuta.OneFailed, Run: body},
	}}
	o := setup(t, batuta.Config{Workers: 8}, wf)
	ctx := waitCtx(t)
	var ids []string
	for i := 0; i < 2000; i++ {
		id, err := o.SubmitBlocking(ctx, "w", batuta.Event{})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	for _, id := range ids {
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
		require.Equal(t, batuta.TaskSkipped, r.Task("e").State)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, count, 2000*4)
	for k, n := range count {
		require.Equal(t, 1, n, k)
	}
}

func TestRetentionPrunesFinishedRuns(t *testing.T) {
	t.Parallel()
	clock := batutatest.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}
	o := setup(t, batuta.Config{Clock: clock, Retention: time.Hour, RetentionInterval: 5 * time.Millisecond}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{ID: "old"})
	require.NoError(t, err)
	_, err = o.Wait(ctx, id)
	require.NoError(t, err)
	clock.Advance(2 * time.Hour)
	require.Eventually(t, func() bool {
		_, err := o.GetRun(ctx, id)
		return errors.Is(err, batuta.ErrRunNotFound)
	}, 10*time.Second, 5*time.Millisecond)
}

// TestTaskHonouringCtxIsNotAbandoned: a body that returns as soon as its
// ctx ends is never taken for one that ignores it, however late its
// goroutine is scheduled after the deadline, and its error carries
// ErrTimeout like an abandoned one's.
func TestTaskHonouringCtxIsNotAbandoned(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "polite", Timeout: 5 * time.Millisecond, Retry: batuta.RetryPolicy{MaxAttempts: 1},
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			}},
	}}
	o := setup(t, batuta.Config{Workers: 8, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, wf)
	ctx := waitCtx(t)
	const runs = 200
	ids := make([]string, runs)
	for i := range ids {
		id, err := o.Submit(ctx, "w", batuta.Event{ID: fmt.Sprint(i)})
		require.NoError(t, err)
		ids[i] = id
	}
	for _, id := range ids {
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		a := r.Task("polite").Attempts
		require.Len(t, a, 1)
		require.Equal(t, batuta.OutcomeTimedOut, a[0].Outcome)
		require.Contains(t, a[0].Error, batuta.ErrTimeout.Error()+": task polite exceeded its timeout of 5ms: context deadline exceeded")
	}
	require.NotContains(t, logs.String(), "ignores its canceled context")
}

// lockedBuffer is a strings.Builder safe for a logger's concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
