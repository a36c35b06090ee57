package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// claimingStore makes the memory store a durable ClaimingCompleter and
// CreatingClaimer (each a store call after the other: the executor's use
// of them is what is tested here; the atomicity is batutatest's), and
// counts what the executor asked of them.
type claimingStore struct {
	durableStore
	fusedCompletes, fusedClaims, createCalls, createClaims, signalClaims atomic.Int32
}

func (c *claimingStore) CompleteTasksAndClaim(ctx context.Context, cs []batuta.Completion, p batuta.ClaimParams) ([]batuta.CompleteResult, []batuta.Claim, error) {
	res, err := c.CompleteTasks(ctx, cs)
	if err != nil || p.Limit <= 0 {
		return res, nil, err
	}
	c.fusedCompletes.Add(1)
	claims, err := c.Store.ClaimTasks(ctx, p)
	if err != nil {
		return nil, nil, err
	}
	c.fusedClaims.Add(int32(len(claims)))
	return res, claims, nil
}

func (c *claimingStore) CreateRunsAndClaim(ctx context.Context, runs []batuta.NewRun, p batuta.ClaimParams) ([]batuta.CreateResult, []batuta.Claim, error) {
	c.createCalls.Add(1)
	res, err := c.CreateRuns(ctx, runs)
	if err != nil || p.Limit <= 0 {
		return res, nil, err
	}
	claims, err := c.Store.ClaimTasks(ctx, p)
	if err != nil {
		return nil, nil, err
	}
	c.createClaims.Add(int32(len(claims)))
	return res, claims, nil
}

var (
	_ batuta.ClaimingCompleter = (*claimingStore)(nil)
	_ batuta.CreatingClaimer   = (*claimingStore)(nil)
)

// TestClaimingStorePaths: with a store that claims with its completions and
// creations, Submit hands the new run's first task to a free worker and
// each completion hands the worker its next task; every task runs once
// and in order, and outputs flow as on the other paths.
func TestClaimingStorePaths(t *testing.T) {
	t.Parallel()
	cs := &claimingStore{durableStore: durableStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}}
	o, err := batuta.New(batuta.Config{Store: cs, Workers: 4, NoLogHooks: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	var mu sync.Mutex
	ran := map[string]int{}
	step := func(name string) batuta.TaskFunc {
		return func(_ context.Context, in *batuta.Input) (any, error) {
			mu.Lock()
			ran[in.RunID()+"/"+name]++
			mu.Unlock()
			if name == "a" {
				return 1, nil
			}
			prev, err := batuta.Output[int](in, map[string]string{"b": "a", "c": "b"}[name])
			return prev + 1, err
		}
	}
	require.NoError(t, o.Register(&batuta.Workflow{Name: "chain", Tasks: []batuta.Task{
		{Name: "a", Run: step("a")},
		{Name: "b", Deps: []string{"a"}, Run: step("b")},
		{Name: "c", Deps: []string{"b"}, Run: step("c")},
	}}))
	runOrch(t, o)
	ctx := waitCtx(t)
	const runs = 50
	check := func(id string) {
		t.Helper()
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
		n, err := batuta.OutputAs[int](r.Task("c").Output)
		require.NoError(t, err)
		require.Equal(t, 3, n)
	}
	// A first run, to be sure Run is executing (its Submit may come
	// before), then one at a time: every worker is free at each Submit,
	// which claims the new run's first task with its creation; each
	// completion claims the next task.
	first, err := o.Submit(ctx, "chain", batuta.Event{ID: "first"})
	require.NoError(t, err)
	check(first)
	cs.createCalls.Store(0)
	cs.createClaims.Store(0)
	cs.fusedClaims.Store(0)
	for i := range 10 {
		id, err := o.Submit(ctx, "chain", batuta.Event{ID: fmt.Sprintf("s%d", i)})
		require.NoError(t, err)
		check(id)
	}
	require.EqualValues(t, 10, cs.createCalls.Load(), "each Submit with a free worker went through CreateRunsAndClaim")
	require.EqualValues(t, 10, cs.createClaims.Load(), "each claimed its run's first task")
	require.EqualValues(t, 20, cs.fusedClaims.Load(), "b and c were claimed with the completions of a and b")
	// A burst: some Submits find every worker busy and create plainly.
	ids := make([]string, runs)
	for i := range ids {
		ids[i], err = o.Submit(ctx, "chain", batuta.Event{ID: fmt.Sprintf("e%d", i)})
		require.NoError(t, err)
	}
	for _, id := range ids {
		check(id)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, ran, (runs+11)*3)
	for k, n := range ran {
		require.Equal(t, 1, n, "task %s ran %d times", k, n)
	}
}

// TestClaimingStoreSubmitWhileStopping: runs submitted while the
// orchestrator shuts down are recorded, and a task claimed with a creation
// after the workers stopped is handed back to the store, not lost (no
// panic on the closed work channel either): it runs after a restart.
func TestClaimingStoreSubmitWhileStopping(t *testing.T) {
	t.Parallel()
	cs := &claimingStore{durableStore: durableStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}}
	var ranCount atomic.Int32
	wf := &batuta.Workflow{Name: "one", Tasks: []batuta.Task{{Name: "a", Run: func(context.Context, *batuta.Input) (any, error) {
		ranCount.Add(1)
		return nil, nil
	}}}}
	run := func(ctx context.Context) (*batuta.Orchestrator, chan error) {
		o, err := batuta.New(batuta.Config{Store: cs, Workers: 2, NoLogHooks: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			ShutdownGrace: 100 * time.Millisecond, ShutdownKill: 100 * time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, o.Register(wf))
		done := make(chan error, 1)
		go func() { done <- o.Run(ctx) }()
		require.Eventually(t, func() bool {
			_, err := o.Invoke(context.Background(), "batuta-test-no-such-function", nil)
			return errors.Is(err, batuta.ErrUnknownWorkflow)
		}, 10*time.Second, time.Millisecond)
		return o, done
	}
	ctx, cancel := context.WithCancel(context.Background())
	o, done := run(ctx)
	var ids []string
	var wg sync.WaitGroup
	var idMu sync.Mutex
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				id, err := o.Submit(context.Background(), "one", batuta.Event{ID: fmt.Sprintf("g%d-%d", g, i)})
				if err == nil {
					idMu.Lock()
					ids = append(ids, id)
					idMu.Unlock()
				}
			}
		}()
	}
	time.AfterFunc(2*time.Millisecond, cancel)
	wg.Wait()
	require.NoError(t, <-done)
	// A second orchestrator finishes what the first left.
	ctx2, cancel2 := context.WithCancel(context.Background())
	o2, done2 := run(ctx2)
	defer func() {
		cancel2()
		require.NoError(t, <-done2)
	}()
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	for _, id := range ids {
		r, err := o2.Wait(wctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State, "run %s", id)
	}
	require.GreaterOrEqual(t, ranCount.Load(), int32(len(ids)))
}

// SendSignal honours SignalSend.Claim as a PostgreSQL store does: the
// delivery, then a claim.
func (c *claimingStore) SendSignal(ctx context.Context, sig batuta.SignalSend) (batuta.SignalResult, error) {
	p := sig.Claim
	sig.Claim = nil
	res, err := c.Store.SendSignal(ctx, sig)
	if err != nil || p == nil || !res.Delivered {
		return res, err
	}
	if res.Claims, err = c.Store.ClaimTasks(ctx, *p); err != nil {
		return batuta.SignalResult{}, err
	}
	c.signalClaims.Add(int32(len(res.Claims)))
	return res, nil
}

// TestClaimingStoreSignal: a signal sent through the orchestrator has the
// task after the wait claimed with the delivery and run by a free worker.
func TestClaimingStoreSignal(t *testing.T) {
	t.Parallel()
	cs := &claimingStore{durableStore: durableStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}}
	o, err := batuta.New(batuta.Config{Store: cs, Workers: 2, NoLogHooks: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "approve", Tasks: []batuta.Task{
		{Name: "wait", Signal: &batuta.SignalWait{Name: "ok"}},
		{Name: "after", Deps: []string{"wait"}, Run: func(_ context.Context, in *batuta.Input) (any, error) {
			v, err := batuta.Output[string](in, "wait")
			return "got " + v, err
		}},
	}}))
	runOrch(t, o)
	ctx := waitCtx(t)
	for i := range 5 {
		id, err := o.Submit(ctx, "approve", batuta.Event{ID: fmt.Sprintf("a%d", i)})
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			r, err := o.GetRun(ctx, id)
			return err == nil && r.Task("wait").WaitingFor != ""
		}, 10*time.Second, time.Millisecond)
		require.NoError(t, o.Signal(ctx, id, "ok", "yes"))
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
		out, err := batuta.OutputAs[string](r.Task("after").Output)
		require.NoError(t, err)
		require.Equal(t, "got yes", out)
	}
	require.EqualValues(t, 5, cs.signalClaims.Load(), "each task after the wait was claimed with the delivery")
}

// overClaimingStore breaks the CreatingClaimer contract the way a faulty
// store could: its first CreateRunsAndClaim also records extra runs and
// claims their tasks too, over the limit it was given.
type overClaimingStore struct {
	claimingStore
	extra int
	once  sync.Once
	ids   []string
	did   atomic.Bool // ids is written
}

func (c *overClaimingStore) CreateRunsAndClaim(ctx context.Context, runs []batuta.NewRun, p batuta.ClaimParams) ([]batuta.CreateResult, []batuta.Claim, error) {
	res, err := c.CreateRuns(ctx, runs)
	if err != nil || p.Limit <= 0 {
		return res, nil, err
	}
	c.once.Do(func() {
		for i := range c.extra {
			nr := runs[0]
			nr.ID = fmt.Sprintf("0199f0e0-0000-7000-8000-%012d", i+1)
			nr.Event.ID = fmt.Sprintf("extra-%d", i)
			if _, _, err = c.CreateRun(ctx, nr); err == nil {
				c.ids = append(c.ids, nr.ID)
			}
		}
		p.Limit += c.extra
		c.did.Store(true)
	})
	if err != nil {
		return nil, nil, err
	}
	claims, err := c.Store.ClaimTasks(ctx, p)
	return res, claims, err
}

// TestOverClaimReleased: claims a store returns beyond the workers reserved
// for them are handed back at once, not dropped (a dropped claim strands
// its task until the lease expires, an hour here).
func TestOverClaimReleased(t *testing.T) {
	t.Parallel()
	st := &overClaimingStore{claimingStore: claimingStore{durableStore: durableStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}}, extra: 3}
	o, err := batuta.New(batuta.Config{Store: st, Workers: 1, LeaseDuration: time.Hour, NoLogHooks: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "one", Tasks: []batuta.Task{{Name: "a", Run: func(context.Context, *batuta.Input) (any, error) {
		return nil, nil
	}}}}))
	start(t, o)
	// Submit until one Submit took the fused path (a worker was free).
	var ids []string
	require.Eventually(t, func() bool {
		id, err := o.Submit(context.Background(), "one", batuta.Event{ID: fmt.Sprintf("s%d", len(ids))})
		if err == nil {
			ids = append(ids, id)
		}
		return st.did.Load()
	}, 10*time.Second, time.Millisecond)
	require.Len(t, st.ids, 3, "the fake's extra runs")
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	for _, rid := range append(st.ids, ids...) {
		r, err := o.Wait(wctx, rid)
		require.NoError(t, err, "run %s (stranded by a dropped claim?)", rid)
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
}
