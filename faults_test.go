package batuta_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// faultStore wraps a real store and fails calls while down is set, the way a
// database that restarts does.
type faultStore struct {
	batuta.Store
	down           atomic.Bool
	claimsWhenDown atomic.Int32
	loseLeases     atomic.Bool
}

var errDBDown = errors.New("connection refused")

func (f *faultStore) ClaimTasks(ctx context.Context, p batuta.ClaimParams) ([]batuta.Claim, error) {
	if f.down.Load() {
		f.claimsWhenDown.Add(1)
		return nil, errDBDown
	}
	return f.Store.ClaimTasks(ctx, p)
}

func (f *faultStore) CompleteTasks(ctx context.Context, cs []batuta.Completion) ([]batuta.CompleteResult, error) {
	if f.down.Load() {
		return nil, errDBDown
	}
	return f.Store.CompleteTasks(ctx, cs)
}

func (f *faultStore) ExtendLeases(ctx context.Context, refs []batuta.ClaimRef, until time.Time) ([]batuta.LeaseStatus, error) {
	if f.down.Load() {
		return nil, errDBDown
	}
	if f.loseLeases.Load() {
		out := make([]batuta.LeaseStatus, len(refs))
		for i := range out {
			out[i] = batuta.LeaseLost
		}
		return out, nil
	}
	return f.Store.ExtendLeases(ctx, refs, until)
}

// TestStoreOutageMidRun: the store fails while tasks run and while workers
// look for work; nothing is lost, results are recorded once it is back, and
// idle workers back off instead of spinning.
func TestStoreOutageMidRun(t *testing.T) {
	t.Parallel()
	fs := &faultStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}
	release := make(chan struct{})
	var started atomic.Int32
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			started.Add(1)
			<-release
			return "a", nil
		}},
		{Name: "b", Deps: []string{"a"}, Run: noop},
	}}
	o := setup(t, batuta.Config{Store: fs, PollInterval: 5 * time.Millisecond}, wf)
	ctx := waitCtx(t)
	var ids []string
	for i := 0; i < 10; i++ {
		id, err := o.Submit(ctx, "w", batuta.Event{})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	require.Eventually(t, func() bool { return started.Load() == 10 }, 10*time.Second, time.Millisecond)
	fs.down.Store(true)
	close(release) // tasks finish while the store is down
	outage := time.Now()
	require.Eventually(t, func() bool { return fs.claimsWhenDown.Load() >= 3 }, 10*time.Second, time.Millisecond)
	// Hold the outage for a while, then bring the store back.
	for time.Since(outage) < 300*time.Millisecond {
		time.Sleep(10 * time.Millisecond) // the outage's length, not synchronisation
	}
	calls := fs.claimsWhenDown.Load()
	fs.down.Store(false)
	for _, id := range ids {
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
		require.Len(t, r.Task("a").Attempts, 1, "the result was recorded after the outage, not re-run")
	}
	// With a 5 ms poll interval a spinning dispatcher would have made ~60
	// claims in 300 ms; backoff (50 ms doubling) makes a handful.
	require.Less(t, calls, int32(20), "claims during a 300 ms outage")
}

// TestLeaseLostStopsTheTask: when the heartbeat finds the lease gone, the
// task's ctx is canceled and its result is not recorded as its own.
func TestLeaseLostStopsTheTask(t *testing.T) {
	t.Parallel()
	fs := &faultStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}
	var attempts atomic.Int32
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
		if attempts.Add(1) == 1 {
			fs.loseLeases.Store(true)
			<-ctx.Done() // canceled by the heartbeat
			fs.loseLeases.Store(false)
			return nil, ctx.Err()
		}
		return "second", nil
	}}}}
	o := setup(t, batuta.Config{Store: fs, LeaseDuration: 30 * time.Millisecond}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.Equal(t, "second", r.Task("a").Output)
	require.Len(t, r.Task("a").Attempts, 1, "the attempt that lost its lease is handed back, not recorded")
	require.EqualValues(t, 2, attempts.Load())
}

// durableStore makes the memory store look durable, so the orchestrator
// takes the durable path: outputs encoded as JSON, completions batched.
type durableStore struct {
	batuta.Store
	calls, completions, maxBatch atomic.Int32
}

func (d *durableStore) Durable() bool { return true }

func (d *durableStore) CompleteTasks(ctx context.Context, cs []batuta.Completion) ([]batuta.CompleteResult, error) {
	d.calls.Add(1)
	d.completions.Add(int32(len(cs)))
	for {
		m := d.maxBatch.Load()
		if int32(len(cs)) <= m || d.maxBatch.CompareAndSwap(m, int32(len(cs))) {
			break
		}
	}
	return d.Store.CompleteTasks(ctx, cs)
}

func TestDurablePathEncodesOutputsAndBatchesCompletions(t *testing.T) {
	t.Parallel()
	ds := &durableStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}
	type out struct{ N int }
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "a", Run: func(context.Context, *batuta.Input) (any, error) { return out{N: 7}, nil }},
		{Name: "b", Deps: []string{"a"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			o, err := batuta.Output[out](in, "a") // decoded from JSON on this path
			return o.N + 1, err
		}},
		{Name: "c", Deps: []string{"a"}, Retry: batuta.RetryPolicy{MaxAttempts: 1}, Run: func(context.Context, *batuta.Input) (any, error) {
			return make(chan int), nil // not JSON-encodable: fails the task, not the process
		}},
	}}
	o := setup(t, batuta.Config{Store: ds, Workers: 16}, wf)
	ctx := waitCtx(t)
	var ids []string
	for i := 0; i < 300; i++ {
		id, err := o.Submit(ctx, "w", batuta.Event{})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	for _, id := range ids {
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunFailed, r.State)
		n, err := batuta.OutputAs[int](r.Task("b").Output)
		require.NoError(t, err)
		require.Equal(t, 8, n)
		require.Contains(t, r.Task("c").Error, "not JSON-encodable")
	}
	require.EqualValues(t, 900, ds.completions.Load(), "every completion recorded once")
	t.Logf("%d completions in %d store calls (largest batch %d)", ds.completions.Load(), ds.calls.Load(), ds.maxBatch.Load())
}
