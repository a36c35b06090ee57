package batuta_test

import (
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// storeHooksRecorder records what a StoreHooks is told.
type storeHooksRecorder struct {
	batuta.NopHooks
	mu       sync.Mutex
	calls    map[batuta.StoreOp]int // calls that claimed or recorded tasks
	tasks    map[batuta.StoreOp]int
	rescued  int
	negative bool // a negative duration was reported
}

func (r *storeHooksRecorder) StoreCall(op batuta.StoreOp, took time.Duration, n int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if took < 0 {
		r.negative = true
	}
	if err == nil && n > 0 {
		r.calls[op]++
		r.tasks[op] += n
	}
}

func (r *storeHooksRecorder) Rescued(rescued, failed int) {
	r.mu.Lock()
	r.rescued += rescued + failed
	r.mu.Unlock()
}

func (r *storeHooksRecorder) snapshot() (calls, tasks map[batuta.StoreOp]int, rescued int, negative bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	calls, tasks = map[batuta.StoreOp]int{}, map[batuta.StoreOp]int{}
	for k, v := range r.calls {
		calls[k] = v
	}
	for k, v := range r.tasks {
		tasks[k] = v
	}
	return calls, tasks, r.rescued, r.negative
}

// TestStoreHooksSeeClaimsCompletionsAndRescues: a Hooks that is also a
// StoreHooks is told of the executor's claims and completions (every task
// claimed and recorded once) and of a rescue of a task whose worker died.
func TestStoreHooksSeeClaimsCompletionsAndRescues(t *testing.T) {
	st := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	rec := &storeHooksRecorder{calls: map[batuta.StoreOp]int{}, tasks: map[batuta.StoreOp]int{}}
	o, err := batuta.New(batuta.Config{Store: st, Hooks: []batuta.Hooks{rec}, NoLogHooks: true, LeaseDuration: 100 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "wf", Tasks: []batuta.Task{
		{Name: "a", Run: noop}, {Name: "b", Deps: []string{"a"}, Run: noop},
	}}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "lost", Tasks: []batuta.Task{{Name: "x", Run: noop}}}))

	// A task of "lost" claimed by a worker that then dies (never completes).
	ctx := waitCtx(t)
	lostID, err := o.Submit(ctx, "lost", batuta.Event{})
	require.NoError(t, err)
	now := time.Now()
	cs, err := st.ClaimTasks(ctx, batuta.ClaimParams{Owner: "dead", Workflows: []string{"lost"}, Limit: 1, Now: now, LeaseUntil: now.Add(50 * time.Millisecond)})
	require.NoError(t, err)
	require.Len(t, cs, 1)

	start(t, o)
	const runs = 20
	for range runs {
		id, err := o.Submit(ctx, "wf", batuta.Event{})
		require.NoError(t, err)
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	r, err := o.Wait(ctx, lostID) // rescued, then run by o
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.Equal(t, 1, r.Tasks[0].Rescues)

	// The rescuer reports after the store call returns: the rescued task
	// may have run by then. Wait for the report.
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Likewise a completion is reported after the store recorded it
		// (and Wait may have returned).
		if _, tasks, rescued, _ := rec.snapshot(); rescued > 0 && tasks[batuta.StoreOpComplete] >= 2*runs+1 {
			break
		}
		require.True(t, time.Now().Before(deadline), "no rescue, or not every completion, reported")
		time.Sleep(5 * time.Millisecond)
	}
	calls, tasks, rescued, negative := rec.snapshot()
	require.False(t, negative, "negative duration")
	// 2 tasks per run and the rescued one: each claimed and recorded once.
	require.Equal(t, 2*runs+1, tasks[batuta.StoreOpComplete], "tasks recorded")
	require.GreaterOrEqual(t, tasks[batuta.StoreOpClaim], 1, "tasks claimed through claim rounds")
	require.Positive(t, calls[batuta.StoreOpClaim])
	require.Equal(t, 1, rescued)
	require.Equal(t, 1, tasks[batuta.StoreOpRescue])
}
