package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// countingStore counts GetRun calls made from inside task attempts: the
// attempt's ctx carries the task's name (put there by taskTagHooks), so
// Wait's polling and other readers are not counted.
type countingStore struct {
	batuta.Store
	mu    sync.Mutex
	calls map[string]int
}

type taskTagKey struct{}

func (s *countingStore) GetRun(ctx context.Context, id string) (*batuta.Run, error) {
	if task, ok := ctx.Value(taskTagKey{}).(string); ok {
		s.mu.Lock()
		s.calls[task]++
		s.mu.Unlock()
	}
	return s.Store.GetRun(ctx, id)
}

func (s *countingStore) count(task string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[task]
}

type taskTagHooks struct{ batuta.NopHooks }

func (taskTagHooks) AttemptStarted(ctx context.Context, a batuta.AttemptInfo) context.Context {
	return context.WithValue(ctx, taskTagKey{}, a.Task)
}

// ancestorWorkflow is a chain validate -> reserve -> charge -> email, with
// a sibling branch audit (after validate) that email does not depend on.
// email reads every ancestor; the reads are recorded in got.
func ancestorWorkflow(got *sync.Map, store *countingStore) *batuta.Workflow {
	type order struct {
		ID    int `json:"id"`
		Total int `json:"total"`
	}
	return &batuta.Workflow{Name: "order", Tasks: []batuta.Task{
		{Name: "validate", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			return batuta.EventData[order](in)
		}},
		{Name: "audit", Deps: []string{"validate"}, Run: noop},
		{Name: "reserve", Deps: []string{"validate"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			return "slot-9", nil
		}},
		{Name: "charge", Deps: []string{"reserve"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			o, err := batuta.Output[order](in, "validate") // grand-ancestor
			return o.Total * 2, err
		}},
		{Name: "email", Deps: []string{"charge"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			c, err := batuta.Output[int](in, "charge") // direct: no store read
			if err != nil {
				return nil, err
			}
			if store != nil {
				got.Store("reads after direct", store.count("email"))
			}
			o, err := batuta.Output[order](in, "validate") // three levels up
			if err != nil {
				return nil, err
			}
			r, err := batuta.Output[string](in, "reserve") // two levels up
			if err != nil {
				return nil, err
			}
			if store != nil {
				got.Store("reads after ancestors", store.count("email"))
			}
			_, err = batuta.Output[any](in, "audit") // a sibling branch
			got.Store("audit error", err)
			_, err = batuta.Output[any](in, "email") // itself
			got.Store("self error", err)
			_, err = batuta.Output[any](in, "ghost") // no such task
			got.Store("ghost error", err)
			_, err = batuta.Output[string](in, "charge") // wrong type
			got.Store("type error", err)
			return fmt.Sprintf("order %d, %s, charged %d", o.ID, r, c), nil
		}},
	}}
}

func TestOutputFromAncestor(t *testing.T) {
	t.Parallel()
	store := &countingStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{}), calls: map[string]int{}}
	var got sync.Map
	o := setup(t, batuta.Config{Store: store, Hooks: []batuta.Hooks{taskTagHooks{}}}, ancestorWorkflow(&got, store))
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "order", batuta.Event{Data: []byte(`{"id":7,"total":50}`)})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	require.Equal(t, 100, r.Task("charge").Output)
	require.Equal(t, "order 7, slot-9, charged 100", r.Task("email").Output)

	// Direct dependencies come with the claim; further ancestors cost one
	// store read per attempt, however many are read.
	v, _ := got.Load("reads after direct")
	require.Equal(t, 0, v)
	v, _ = got.Load("reads after ancestors")
	require.Equal(t, 1, v)

	checkNotAncestor := func(key, want string) {
		t.Helper()
		v, _ := got.Load(key)
		err, _ := v.(error)
		require.ErrorIs(t, err, batuta.ErrNotAncestor, key)
		require.ErrorContains(t, err, want, key)
		// The list of what email can read, in workflow order.
		require.ErrorContains(t, err, `task "email" can read "validate", "reserve", "charge"`, key)
	}
	checkNotAncestor("audit error", `task "audit" is not an ancestor of task "email"; `)
	checkNotAncestor("audit error", `to read "audit", add it to Task.Deps of "email"`)
	checkNotAncestor("self error", `task "email" is not an ancestor of task "email"`)
	checkNotAncestor("ghost error", `workflow "order" has no task "ghost"`)
	v, _ = got.Load("type error")
	require.ErrorIs(t, v.(error), batuta.ErrTypeMismatch)
}

// A task without dependencies can read no output, and says so.
func TestOutputWithoutDependencies(t *testing.T) {
	t.Parallel()
	errc := make(chan error, 1)
	o := setup(t, batuta.Config{}, &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "a", Run: noop},
		{Name: "b", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			_, err := batuta.Output[any](in, "a")
			errc <- err
			return nil, nil
		}},
	}})
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	_, err = o.Wait(ctx, id)
	require.NoError(t, err)
	err = <-errc
	require.ErrorIs(t, err, batuta.ErrNotAncestor)
	require.ErrorContains(t, err, `task "b" has no dependencies, so it can read no output; to read "a", add it to Task.Deps of "b"`)
}

// An ancestor that did not succeed (skipped here) has no output: the error
// matches ErrNoOutput, whether the ancestor is a direct dependency or not.
func TestOutputFromSkippedAncestor(t *testing.T) {
	t.Parallel()
	var direct, indirect, grand error
	var mu sync.Mutex
	o := setup(t, batuta.Config{}, &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "a", Run: func(context.Context, *batuta.Input) (any, error) { return "A", nil }},
		{Name: "b", Deps: []string{"a"}, When: batuta.OneFailed, Run: noop}, // skipped: a succeeded
		{Name: "c", Deps: []string{"b"}, When: batuta.AllDone, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			_, err := batuta.Output[any](in, "b")
			mu.Lock()
			direct = err
			mu.Unlock()
			return batuta.Output[string](in, "a") // a grand-ancestor that succeeded
		}},
		{Name: "d", Deps: []string{"c"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			_, err := batuta.Output[any](in, "b")
			mu.Lock()
			indirect = err
			mu.Unlock()
			_, err = batuta.Output[string](in, "a")
			mu.Lock()
			grand = err
			mu.Unlock()
			return nil, nil
		}},
	}})
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.TaskSkipped, r.Task("b").State)
	require.Equal(t, "A", r.Task("c").Output)
	mu.Lock()
	defer mu.Unlock()
	for _, err := range []error{direct, indirect} {
		require.ErrorIs(t, err, batuta.ErrNoOutput)
		require.ErrorContains(t, err, `output of "b": task skipped`)
		require.False(t, errors.Is(err, batuta.ErrNotAncestor))
	}
	require.NoError(t, grand)
}

// A store that fails the read of the run: Output returns its error, not a
// permanent one (a retry may succeed).
type failingGetRun struct{ batuta.Store }

var errStoreDown = errors.New("store down")

func (s failingGetRun) GetRun(ctx context.Context, id string) (*batuta.Run, error) {
	if ctx.Value(taskTagKey{}) != nil {
		return nil, errStoreDown
	}
	return s.Store.GetRun(ctx, id)
}

func TestOutputAncestorStoreError(t *testing.T) {
	t.Parallel()
	errc := make(chan error, 1)
	store := failingGetRun{batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}
	o := setup(t, batuta.Config{Store: store, Hooks: []batuta.Hooks{taskTagHooks{}}}, &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "a", Run: noop},
		{Name: "b", Deps: []string{"a"}, Run: noop},
		{Name: "c", Deps: []string{"b"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			_, err := batuta.Output[any](in, "a")
			errc <- err
			return nil, nil
		}},
	}})
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	_, err = o.Wait(ctx, id)
	require.NoError(t, err)
	err = <-errc
	require.ErrorIs(t, err, errStoreDown)
	require.False(t, batuta.IsPermanent(err))
}

// BenchmarkExecutorChainOutput: BenchmarkExecutorChain where each task reads
// its direct dependency's output, the path ancestor reads must not slow.
func BenchmarkExecutorChainOutput(b *testing.B) {
	tasks := make([]batuta.Task, shapeN)
	for i := range tasks {
		tasks[i] = batuta.Task{Name: fmt.Sprintf("t%d", i), Run: func(ctx context.Context, in *batuta.Input) (any, error) { return i, nil }}
		if i > 0 {
			prev := tasks[i-1].Name
			tasks[i].Deps = []string{prev}
			tasks[i].Run = func(ctx context.Context, in *batuta.Input) (any, error) {
				n, err := batuta.Output[int](in, prev)
				return n + 1, err
			}
		}
	}
	runShape(b, &batuta.Workflow{Name: "chain-output", Tasks: tasks})
}

// BenchmarkExecutorChainAncestor: BenchmarkExecutorChain where each task
// reads the output of the first task, an ancestor up to 10k levels up.
func BenchmarkExecutorChainAncestor(b *testing.B) {
	tasks := make([]batuta.Task, shapeN)
	for i := range tasks {
		tasks[i] = batuta.Task{Name: fmt.Sprintf("t%d", i), Run: func(ctx context.Context, in *batuta.Input) (any, error) { return 1, nil }}
		if i > 0 {
			tasks[i].Deps = []string{tasks[i-1].Name}
			tasks[i].Run = func(ctx context.Context, in *batuta.Input) (any, error) {
				return batuta.Output[int](in, "t0")
			}
		}
	}
	runShape(b, &batuta.Workflow{Name: "chain-ancestor", Tasks: tasks})
}
