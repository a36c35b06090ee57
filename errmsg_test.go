package batuta_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/stretchr/testify/require"
)

// TestRegisterErrorsSayWhatToDo: every validation error of Register names
// the field, and says what to put there (an example value or the call to
// make), and still matches ErrInvalidWorkflow and *WorkflowError.
func TestRegisterErrorsSayWhatToDo(t *testing.T) {
	t.Parallel()
	task := func(mod func(*batuta.Task)) *batuta.Workflow {
		tk := batuta.Task{Name: "charge", Run: noop}
		mod(&tk)
		return &batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{Name: "validate", Run: noop}, tk}}
	}
	cases := []struct {
		name string
		wf   *batuta.Workflow
		want []string
	}{
		{"nil", nil, []string{"nil workflow", `o.Register(&batuta.Workflow{Name: "orders"`}},
		{"empty name", &batuta.Workflow{Tasks: []batuta.Task{{Name: "a", Run: noop}}}, []string{"Workflow.Name is empty", `e.g. Name: "orders"`}},
		{"bad name", &batuta.Workflow{Name: "my orders", Tasks: []batuta.Task{{Name: "a", Run: noop}}}, []string{`invalid workflow "my orders"`, "Workflow.Name", "letters, digits", `e.g. Name: "orders"`}},
		{"no tasks", &batuta.Workflow{Name: "orders"}, []string{"Workflow.Tasks is empty", `e.g. Tasks: []batuta.Task{{Name: "charge", Run: charge}}`}},
		{"workflow timeout", &batuta.Workflow{Name: "orders", Timeout: -time.Second, Tasks: []batuta.Task{{Name: "a", Run: noop}}}, []string{"Workflow.Timeout must not be negative (got -1s)", "e.g. Timeout: 10*time.Minute", "0 for no limit"}},
		{"workflow concurrency", &batuta.Workflow{Name: "orders", Concurrency: &batuta.Concurrency{Max: -2}, Tasks: []batuta.Task{{Name: "a", Run: noop}}}, []string{"Workflow.Concurrency.Max must be at least 1 (got -2)", "e.g. Max: 1"}},
		{"empty task name", &batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{Run: noop}}}, []string{"Workflow.Tasks[0]: Task.Name is empty", `e.g. Name: "charge"`}},
		{"bad task name", task(func(tk *batuta.Task) { tk.Name = "charge card" }), []string{`task "charge card"`, "Task.Name", `e.g. Name: "charge"`}},
		{"duplicate task", task(func(tk *batuta.Task) { tk.Name = "validate" }), []string{"Workflow.Tasks[0] and [1] are both named \"validate\"", "give each Task.Name its own value"}},
		{"nil run", task(func(tk *batuta.Task) { tk.Run = nil }), []string{`task "charge"`, "Task.Run is nil", "set it to a func(ctx context.Context, in *batuta.Input) (any, error)"}},
		{"task timeout", task(func(tk *batuta.Task) { tk.Timeout = -time.Millisecond }), []string{`task "charge"`, "Task.Timeout must not be negative (got -1ms)", "e.g. Timeout: 30*time.Second"}},
		{"join rule", task(func(tk *batuta.Task) { tk.When = 9 }), []string{"Task.When: unknown join rule 9", "batuta.AllSucceeded (the default)", "NoneFailed"}},
		{"fire early", task(func(tk *batuta.Task) { tk.FireEarly = true }), []string{"Task.FireEarly needs Task.When = batuta.OneSucceeded or batuta.OneFailed, not all_succeeded", "set When: batuta.OneSucceeded"}},
		{"max attempts", task(func(tk *batuta.Task) { tk.Retry.MaxAttempts = -1 }), []string{"Task.Retry.MaxAttempts must not be negative (got -1)", "e.g. MaxAttempts: 5", "1 for no retries", "0 for the default (3)"}},
		{"initial delay", task(func(tk *batuta.Task) { tk.Retry.InitialDelay = -time.Second }), []string{"Task.Retry.InitialDelay must not be negative (got -1s)", "e.g. InitialDelay: 500*time.Millisecond"}},
		{"multiplier", task(func(tk *batuta.Task) { tk.Retry.Multiplier = 0.5 }), []string{"Task.Retry.Multiplier must be >= 1 (got 0.5)", "e.g. Multiplier: 1.5"}},
		{"max delay", task(func(tk *batuta.Task) { tk.Retry.MaxDelay = -time.Minute }), []string{"Task.Retry.MaxDelay must not be negative (got -1m0s)", "e.g. MaxDelay: time.Minute"}},
		{"unknown dep", task(func(tk *batuta.Task) { tk.Deps = []string{"valdiate"} }), []string{`Task.Deps: unknown dependency "valdiate"`, `name one of "validate"`}},
		{"unknown dep, alone", &batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{Name: "a", Run: noop, Deps: []string{"b"}}}}, []string{`unknown dependency "b"`, "this workflow has no other task"}},
		{"self dep", task(func(tk *batuta.Task) { tk.Deps = []string{"charge"} }), []string{"depends on itself", `remove "charge" from its own Task.Deps`}},
		{"dep twice", task(func(tk *batuta.Task) { tk.Deps = []string{"validate", "validate"} }), []string{`Task.Deps: dependency "validate" listed twice`, "list each dependency once"}},
		{"cycle", &batuta.Workflow{Name: "orders", Tasks: []batuta.Task{
			{Name: "a", Run: noop, Deps: []string{"b"}}, {Name: "b", Run: noop, Deps: []string{"a"}}}},
			[]string{"dependency cycle: a -> b -> a", "Task.Deps must not loop: remove one of these dependencies"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := batuta.New(batuta.Config{Logger: quiet})
			require.NoError(t, err)
			err = o.Register(tc.wf)
			require.ErrorIs(t, err, batuta.ErrInvalidWorkflow)
			var we *batuta.WorkflowError
			require.ErrorAs(t, err, &we)
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
		})
	}
	t.Run("twice", func(t *testing.T) {
		o, err := batuta.New(batuta.Config{Logger: quiet})
		require.NoError(t, err)
		wf := &batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{Name: "a", Run: noop}}}
		require.NoError(t, o.Register(wf))
		err = o.Register(wf)
		require.ErrorIs(t, err, batuta.ErrInvalidWorkflow)
		require.ErrorContains(t, err, `invalid workflow "orders": already registered`)
		require.ErrorContains(t, err, "give another workflow its own Workflow.Name")
	})
	t.Run("unknown dep lists at most 20 tasks", func(t *testing.T) {
		o, err := batuta.New(batuta.Config{Logger: quiet})
		require.NoError(t, err)
		wf := &batuta.Workflow{Name: "big"}
		for i := range 30 {
			wf.Tasks = append(wf.Tasks, batuta.Task{Name: fmt.Sprintf("t%02d", i), Run: noop})
		}
		wf.Tasks[29].Deps = []string{"nope"}
		err = o.Register(wf)
		require.ErrorContains(t, err, `"t19" (and 9 more)`)
	})
}

func TestUnknownWorkflowErrorsListNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)

	// Nothing registered yet.
	_, err = o.Submit(ctx, "orders", batuta.Event{})
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	require.ErrorContains(t, err, `"orders" (Submit): no workflow is registered yet; call o.Register(&batuta.Workflow{Name: "orders", Tasks: ...}) before Submit`)

	for _, n := range []string{"signup", "billing", "orders-v2"} {
		require.NoError(t, o.Register(&batuta.Workflow{Name: n, Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	}
	_, err = o.Submit(ctx, "orders", batuta.Event{})
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	require.ErrorContains(t, err, `registered: "billing", "orders-v2", "signup"; check the name, or call o.Register`)

	_, err = o.SubmitBlocking(ctx, "orders", batuta.Event{})
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)

	err = o.Bind("orders", batutatest.NewPushTrigger())
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	require.ErrorContains(t, err, `"orders" (Bind); registered: "billing", "orders-v2", "signup"`)
	require.ErrorContains(t, err, "before Bind")

	err = o.Bind("signup", nil)
	require.ErrorContains(t, err, `Bind("signup", nil): the trigger is nil; pass one, e.g.`)

	_, err = o.Runs("orders")
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	require.ErrorContains(t, err, "(Runs)")

	// Bounded: 20 names, then a count.
	for i := range 30 {
		require.NoError(t, o.Register(&batuta.Workflow{Name: fmt.Sprintf("w%02d", i), Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	}
	_, err = o.Submit(ctx, "orders", batuta.Event{})
	require.ErrorContains(t, err, "(and 13 more)")
	require.Less(t, len(err.Error()), 600)
}

func TestFunctionErrorsSayWhatToDo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	o := lambdaOrch(t, batuta.Config{})
	h := func(context.Context, strictOrder) (int, error) { return 0, nil }
	for _, tc := range []struct {
		cfg  batuta.FunctionConfig
		want []string
	}{
		{batuta.FunctionConfig{}, []string{"Name: required: set FunctionConfig.Name", `e.g. Name: "resize-image"`}},
		{batuta.FunctionConfig{Name: "resize image"}, []string{`FunctionConfig.Name "resize image" must be`, `e.g. Name: "resize-image"`}},
		{batuta.FunctionConfig{Name: "f", Concurrency: -1}, []string{"FunctionConfig.Concurrency must not be negative (got -1)", "e.g. Concurrency: 10"}},
		{batuta.FunctionConfig{Name: "f", Timeout: -1}, []string{"FunctionConfig.Timeout must not be negative", "e.g. Timeout: 30*time.Second"}},
		{batuta.FunctionConfig{Name: "f", Retry: batuta.RetryPolicy{Multiplier: 0.1}}, []string{"Retry.Multiplier: must be >= 1 (got 0.1)", "e.g. Multiplier: 1.5"}},
		{batuta.FunctionConfig{Name: "f", DeadLetterRetry: batuta.RetryPolicy{MaxAttempts: -3}}, []string{"DeadLetterRetry.MaxAttempts: must not be negative (got -3)", "e.g. MaxAttempts: 5"}},
	} {
		err := batuta.RegisterFunc(o, tc.cfg, h)
		require.ErrorIs(t, err, batuta.ErrInvalidConfig)
		for _, w := range tc.want {
			require.ErrorContains(t, err, w)
		}
	}
	var nilHandler func(context.Context, strictOrder) (int, error)
	err := batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "f"}, nilHandler)
	require.ErrorIs(t, err, batuta.ErrInvalidConfig)
	require.ErrorContains(t, err, `the handler of function "f" is nil; pass a func(ctx context.Context, in batuta_test.strictOrder) (int, error)`)

	_, err = o.Invoke(ctx, "resize", nil)
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	require.ErrorContains(t, err, `no function is registered; register it first with batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "resize"}, handler)`)
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "thumb"}, h))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "report", Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	_, err = o.InvokeAsync(ctx, "resize", nil)
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
	require.ErrorContains(t, err, `no function named "resize"; registered functions: "thumb"`)
	_, err = o.Invoke(ctx, "report", nil)
	require.ErrorContains(t, err, `"report" is a workflow, not a function: start it with o.Submit`)
}

func TestConfigErrorsSayWhatToDo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  batuta.Config
		want string
	}{
		{batuta.Config{Workers: -1}, "Workers: must not be negative (got -1); use e.g. Workers: 32, or 0 for the default"},
		{batuta.Config{LeaseDuration: -time.Second}, "LeaseDuration: must not be negative (got -1s); use e.g. LeaseDuration: time.Minute"},
		{batuta.Config{Hooks: []batuta.Hooks{nil}}, "Hooks[0]: is nil; remove it, or pass a Hooks value such as batuta.LogHooks(logger)"},
	} {
		_, err := batuta.New(tc.cfg)
		require.ErrorIs(t, err, batuta.ErrInvalidConfig)
		require.ErrorContains(t, err, tc.want)
	}
}

func TestSubmitEventErrorsSayWhatToDo(t *testing.T) {
	t.Parallel()
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	ctx := context.Background()
	_, err = o.Submit(ctx, "w", batuta.Event{ID: strings.Repeat("x", 2000)})
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
	require.ErrorContains(t, err, `Event.ID is 2000 bytes, over 1024; use a shorter value (an ID such as "order-42"`)
	_, err = o.Submit(ctx, "w", batuta.Event{Subject: "a\x00b"})
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)
	require.ErrorContains(t, err, "Event.Subject contains a NUL byte; put binary data in Event.Data")
	_, err = o.Submit(ctx, "w", batuta.Event{Metadata: map[string]string{"k": "\xff"}})
	require.ErrorContains(t, err, `Event.Metadata["k"] is not valid UTF-8`)
}
