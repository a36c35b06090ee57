package batuta

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// countingStore counts GetRun calls; WatchRun and the rest are the
// MemoryStore's.
type countingStore struct {
	*MemoryStore
	gets atomic.Int64
}

func (c *countingStore) GetRun(ctx context.Context, id string) (*Run, error) {
	c.gets.Add(1)
	return c.MemoryStore.GetRun(ctx, id)
}

// TestWaitOnRunFinishedByAnotherOrchestrator: an orchestrator waits on a run
// that another orchestrator (sharing the store) runs and finishes. The
// store publishes the run's end, so Wait reads the run once before waiting
// and once after, and no polling loop runs (its poll interval is an hour).
// The task is held until Wait watches the run, or until Wait has polled
// twice (the behaviour before publication), so the count tells them apart.
func TestWaitOnRunFinishedByAnotherOrchestrator(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ms := NewMemoryStore(MemoryStoreConfig{})
	cs := &countingStore{MemoryStore: ms}
	runner, err := New(Config{Store: ms, NoLogHooks: true})
	require.NoError(t, err)
	release := make(chan struct{})
	require.NoError(t, runner.Register(&Workflow{Name: "wf", Tasks: []Task{{Name: "t", Run: func(ctx context.Context, _ *Input) (any, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	}}}}))
	waiter, err := New(Config{Store: cs, NoLogHooks: true, PollInterval: time.Hour})
	require.NoError(t, err)

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = runner.Run(runCtx) }()
	defer func() { stop(); <-done }()

	id, err := runner.Submit(ctx, "wf", Event{})
	require.NoError(t, err)
	type result struct {
		r   *Run
		err error
	}
	res := make(chan result, 1)
	go func() {
		r, err := waiter.Wait(ctx, id)
		res <- result{r, err}
	}()
	for ms.watch.Watching() == 0 && cs.gets.Load() < 3 {
		select {
		case <-ctx.Done():
			t.Fatal("Wait neither watched the run nor polled")
		case <-time.After(time.Millisecond):
		}
	}
	close(release)
	select {
	case r := <-res:
		require.NoError(t, r.err)
		require.Equal(t, RunSucceeded, r.r.State)
	case <-ctx.Done():
		t.Fatal("Wait did not return after the run finished")
	}
	require.LessOrEqual(t, cs.gets.Load(), int64(2), "Wait polled instead of waiting for the published end of the run")
	require.Zero(t, ms.watch.Watching(), "the watch is released")
}

// TestCronFollowsForeignRunWithoutReading: a cron trigger's tracking of a
// run (overlap skip) reads nothing when the store publishes run ends.
func TestAwaitFinishedReadsNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ms := NewMemoryStore(MemoryStoreConfig{})
	cs := &countingStore{MemoryStore: ms}
	runner, err := New(Config{Store: ms, NoLogHooks: true})
	require.NoError(t, err)
	require.NoError(t, runner.Register(&Workflow{Name: "wf", Tasks: []Task{{Name: "t", Run: func(context.Context, *Input) (any, error) { return nil, nil }}}}))
	follower, err := New(Config{Store: cs, NoLogHooks: true, PollInterval: time.Hour})
	require.NoError(t, err)
	require.NoError(t, follower.Register(&Workflow{Name: "wf", Tasks: []Task{{Name: "t", Run: func(context.Context, *Input) (any, error) { return nil, nil }}}}))
	id, err := runner.Submit(ctx, "wf", Event{})
	require.NoError(t, err)
	runs, err := follower.Runs("wf")
	require.NoError(t, err)
	aw, ok := runs.(runAwaiter)
	require.True(t, ok)
	res := make(chan error, 1)
	go func() { res <- aw.awaitFinished(ctx, id) }()
	for ms.watch.Watching() == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("awaitFinished did not watch the run")
		case <-time.After(time.Millisecond):
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = runner.Run(runCtx) }()
	defer func() { stop(); <-done }()
	select {
	case err := <-res:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("awaitFinished did not return after the run finished")
	}
	require.Zero(t, cs.gets.Load(), "no read of the run was needed")
}

// TestMemoryPruneBounded: Prune deletes in batches of at most BatchSize
// runs, and releases the store's lock between batches: a run submitted
// while a big prune is under way (from inside the pass, after its first
// batch) is created before the prune ends.
func TestMemoryPruneBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const runs, batch = 20000, 500
	ms := NewMemoryStore(MemoryStoreConfig{KeepFinished: -1})
	o, err := New(Config{Store: ms, NoLogHooks: true, MaxInFlightRuns: -1})
	require.NoError(t, err)
	require.NoError(t, o.Register(&Workflow{Name: "wf", Tasks: []Task{{Name: "t", Run: func(context.Context, *Input) (any, error) { return nil, nil }}}}))
	finishAll(t, ctx, o, ms, runs)

	var batches []int
	submitted := make(chan error, 1)
	ms.pruneHook = func(n int) {
		batches = append(batches, n)
		if len(batches) != 1 {
			return
		}
		// The lock must be free now: a Submit from another goroutine
		// completes while the pass is still under way.
		go func() {
			_, err := o.Submit(ctx, "wf", Event{ID: "during-prune"})
			submitted <- err
		}()
		select {
		case err := <-submitted:
			require.NoError(t, err)
		case <-ctx.Done():
			t.Error("Submit blocked during a prune")
		}
	}
	n, err := ms.Prune(ctx, PrunePolicy{Before: time.Now().Add(time.Hour), BatchSize: batch})
	require.NoError(t, err)
	require.Equal(t, runs, n)
	require.GreaterOrEqual(t, len(batches), runs/batch, "batches: %v", batches)
	for i, b := range batches {
		require.LessOrEqual(t, b, batch, "batch %d over BatchSize", i)
		if i < runs/batch {
			require.Equal(t, batch, b, "batch %d", i)
		}
	}
	_, err = ms.FindRun(ctx, "wf", "during-prune")
	require.NoError(t, err, "the run submitted during the prune exists")
}

// finishAll submits n runs and runs them to completion.
func finishAll(t *testing.T, ctx context.Context, o *Orchestrator, ms *MemoryStore, n int) {
	t.Helper()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = o.Run(runCtx) }()
	var last string
	for i := 0; i < n; i++ {
		id, err := o.SubmitBlocking(ctx, "wf", Event{})
		require.NoError(t, err)
		last = id
	}
	_, err := o.Wait(ctx, last)
	require.NoError(t, err)
	for {
		ms.mu.Lock()
		active := ms.active
		ms.mu.Unlock()
		if active == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("runs did not finish")
		case <-time.After(time.Millisecond):
		}
	}
	stop()
	<-done
}
