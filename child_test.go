package batuta_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// errHooks records the errors of failed attempts, as Hooks see them.
type errHooks struct {
	batuta.NopHooks
	mu   sync.Mutex
	errs map[string]error // by workflow/task
	more chan struct{}    // closed and replaced at each record
}

func (h *errHooks) AttemptFinished(_ context.Context, a batuta.AttemptInfo) {
	if a.Err == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.errs == nil {
		h.errs = map[string]error{}
	}
	h.errs[a.Workflow+"/"+a.Task] = a.Err
	if h.more != nil {
		close(h.more)
	}
	h.more = make(chan struct{})
}

// err returns the last error of task ("workflow/task"), waiting for it: Hooks run after the
// outcome is recorded, so after Wait may have returned.
func (h *errHooks) err(t *testing.T, task string) error {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		h.mu.Lock()
		err := h.errs[task]
		if h.more == nil {
			h.more = make(chan struct{})
		}
		more := h.more
		h.mu.Unlock()
		if err != nil {
			return err
		}
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("no failed attempt of task %s reached the hooks", task)
		}
	}
}

// shippingWorkflow is a child workflow of two tasks: label reads the event
// as {"order": n}, notify returns "sent".
func shippingWorkflow(runs *atomic.Int32) *batuta.Workflow {
	return &batuta.Workflow{Name: "shipping", Tasks: []batuta.Task{
		{Name: "label", Run: func(_ context.Context, in *batuta.Input) (any, error) {
			if runs != nil {
				runs.Add(1)
			}
			v, err := batuta.EventData[struct {
				Order int `json:"order"`
			}](in)
			return fmt.Sprintf("label-%d", v.Order), err
		}},
		{Name: "notify", Deps: []string{"label"}, Run: func(context.Context, *batuta.Input) (any, error) { return "sent", nil }},
	}}
}

func TestChildWorkflowSucceedsWithItsOutputs(t *testing.T) {
	t.Parallel()
	var after atomic.Value
	parent := &batuta.Workflow{Name: "order", Tasks: []batuta.Task{
		{Name: "prepare", Run: func(context.Context, *batuta.Input) (any, error) { return 42, nil }},
		{Name: "ship", Deps: []string{"prepare"}, Child: &batuta.ChildWorkflow{
			Workflow: "shipping",
			Event: func(in *batuta.Input) (batuta.Event, error) {
				n, err := batuta.Output[int](in, "prepare")
				return batuta.Event{ID: "ignored", Subject: "order-42", Data: []byte(fmt.Sprintf(`{"order":%d}`, n))}, err
			},
		}},
		{Name: "after", Deps: []string{"ship"}, Run: func(_ context.Context, in *batuta.Input) (any, error) {
			label, err := batuta.ChildOutput[string](in, "ship", "label")
			after.Store(label)
			return label, err
		}},
	}}
	// The parent is registered before its child: the child is looked up
	// when the task first runs.
	o := setup(t, batuta.Config{PollInterval: 10 * time.Millisecond}, parent, shippingWorkflow(nil))
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "order", batuta.Event{ID: "o-42"})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	require.Equal(t, "label-42", after.Load())

	ship := r.Task("ship")
	require.Equal(t, batuta.TaskSucceeded, ship.State)
	require.Equal(t, map[string]any{"label": "label-42", "notify": "sent"}, ship.Output)
	require.NotEmpty(t, ship.Child, "TaskRun.Child links to the child run")
	require.Equal(t, "run "+ship.Child, ship.WaitingFor)
	require.False(t, ship.WaitingSince.IsZero())
	require.Len(t, ship.Attempts, 1, "one attempt: waiting spends none")

	child, err := o.GetRun(ctx, ship.Child)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, child.State)
	require.Equal(t, "shipping", child.Workflow)
	require.Equal(t, &batuta.RunLink{RunID: id, Task: "ship"}, child.Parent, "Run.Parent links back")
	require.Equal(t, id+"/ship", child.Event.ID, "the child's event ID is derived, whatever Event returned")
	require.Equal(t, "order-42", child.Event.Subject)

	label, err := batuta.ChildOutputAs[string](ship.Output, "label")
	require.NoError(t, err)
	require.Equal(t, "label-42", label)
	kids, err := o.ListRuns(ctx, batuta.RunFilter{Parent: id})
	require.NoError(t, err)
	require.Len(t, kids, 1)
}

func TestChildWorkflowDefaultEventIsTheParents(t *testing.T) {
	t.Parallel()
	parent := &batuta.Workflow{Name: "order", Tasks: []batuta.Task{{Name: "ship", Child: &batuta.ChildWorkflow{Workflow: "shipping"}}}}
	o := setup(t, batuta.Config{PollInterval: 10 * time.Millisecond}, shippingWorkflow(nil), parent)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "order", batuta.Event{ID: "o-7", Subject: "s", Data: []byte(`{"order":7}`)})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	label, err := batuta.ChildOutputAs[string](r.Task("ship").Output, "label")
	require.NoError(t, err)
	require.Equal(t, "label-7", label)
	child, err := o.GetRun(ctx, r.Task("ship").Child)
	require.NoError(t, err)
	require.Equal(t, []byte(`{"order":7}`), child.Event.Data)
	require.Equal(t, id+"/ship", child.Event.ID)
}

func TestChildWorkflowFailureIsRetriedThenFails(t *testing.T) {
	t.Parallel()
	// Each child run fails its first two runs.
	var mu sync.Mutex
	runs := map[string]int{}
	failing := &batuta.Workflow{Name: "flaky", Tasks: []batuta.Task{{Name: "work", Retry: batuta.RetryPolicy{MaxAttempts: 1},
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			mu.Lock()
			defer mu.Unlock()
			runs[in.RunID()]++
			if runs[in.RunID()] <= 2 {
				return nil, errors.New("boom")
			}
			return "ok", nil
		}}}}
	hooks := &errHooks{}
	parents := []*batuta.Workflow{
		// Two runs of the child: both fail.
		{Name: "twice", Tasks: []batuta.Task{{Name: "call", Retry: batuta.RetryPolicy{MaxAttempts: 2}, Child: &batuta.ChildWorkflow{Workflow: "flaky"}}}},
		// Three runs: the third succeeds.
		{Name: "thrice", Tasks: []batuta.Task{{Name: "call", Retry: batuta.RetryPolicy{MaxAttempts: 3}, Child: &batuta.ChildWorkflow{Workflow: "flaky"}}}},
	}
	o := setup(t, batuta.Config{PollInterval: 10 * time.Millisecond, Hooks: []batuta.Hooks{hooks}}, append(parents, failing)...)
	ctx := waitCtx(t)

	id, err := o.Submit(ctx, "twice", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	call := r.Task("call")
	require.Equal(t, batuta.TaskFailed, call.State)
	require.Contains(t, call.Error, "child run "+call.Child+" of workflow flaky failed (ran 2 times)")
	require.Contains(t, call.Error, "boom")
	var ce *batuta.ChildError
	require.ErrorAs(t, hooks.err(t, "twice/call"), &ce, "Hooks see a *ChildError")
	require.ErrorIs(t, hooks.err(t, "twice/call"), batuta.ErrChildFailed)
	require.Equal(t, call.Child, ce.RunID)
	require.Equal(t, batuta.RunFailed, ce.State)
	require.Equal(t, 2, ce.Runs)
	child, err := o.GetRun(ctx, call.Child)
	require.NoError(t, err)
	require.Equal(t, 1, child.Retries, "reopened once with RetryRun")
	require.Len(t, child.Task("work").Attempts, 2, "the child keeps every attempt")

	id, err = o.Submit(ctx, "thrice", batuta.Event{})
	require.NoError(t, err)
	r, err = o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	require.Equal(t, map[string]any{"work": "ok"}, r.Task("call").Output)
	kids, err := o.ListRuns(ctx, batuta.RunFilter{Parent: id})
	require.NoError(t, err)
	require.Len(t, kids, 1, "a retry reopens the same child, never a second one")
	require.Equal(t, 2, kids[0].Retries)
	mu.Lock()
	require.Equal(t, 3, runs[kids[0].ID])
	mu.Unlock()
}

func TestCancelingTheParentCancelsTheChild(t *testing.T) {
	t.Parallel()
	started := make(chan string, 1)
	child := &batuta.Workflow{Name: "slow", Tasks: []batuta.Task{{Name: "hang", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
		started <- in.RunID()
		<-ctx.Done()
		return nil, ctx.Err()
	}}}}
	parent := &batuta.Workflow{Name: "p", Tasks: []batuta.Task{{Name: "c", Child: &batuta.ChildWorkflow{Workflow: "slow"}}}}
	o := setup(t, batuta.Config{PollInterval: 10 * time.Millisecond}, parent, child)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "p", batuta.Event{})
	require.NoError(t, err)
	var childID string
	select {
	case childID = <-started:
	case <-ctx.Done():
		t.Fatal("the child's task never started")
	}
	require.NoError(t, o.Cancel(ctx, id))
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, r.State)
	cr, err := o.Wait(ctx, childID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, cr.State, "the cancel cascades to the child")
	require.Equal(t, id, cr.Parent.RunID)
}

func TestChildOfAnUnregisteredWorkflowFailsClearly(t *testing.T) {
	t.Parallel()
	parent := &batuta.Workflow{Name: "p", Tasks: []batuta.Task{{Name: "c", Child: &batuta.ChildWorkflow{Workflow: "ghost"}}}}
	o := setup(t, batuta.Config{}, parent)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "p", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	require.Contains(t, r.Task("c").Error, `unknown workflow: task c: child workflow "ghost" is not registered in this process`)
	require.Len(t, r.Task("c").Attempts, 1, "not retried: registering is a deployment fix")
}

// A crash after the child run was recorded but before the parent task's
// wait was: the task runs again and must find that child, not start another.
func TestChildIsNotStartedTwiceAfterACrash(t *testing.T) {
	t.Parallel()
	st := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	parent := &batuta.Workflow{Name: "p", Tasks: []batuta.Task{{Name: "c", Child: &batuta.ChildWorkflow{Workflow: "shipping"}}}}
	var runs atomic.Int32
	o, err := batuta.New(batuta.Config{Store: st, Logger: quiet, PollInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, o.Register(parent))
	require.NoError(t, o.Register(shippingWorkflow(&runs)))
	ctx := waitCtx(t)
	// The parent run exists (not started: the orchestrator is not running),
	// and so does the child the crashed attempt had recorded.
	id, err := o.Submit(ctx, "p", batuta.Event{Data: []byte(`{"order":1}`)})
	require.NoError(t, err)
	pre, created, err := st.CreateRun(ctx, batuta.NewRun{
		ID: "0190a000-0000-7000-8000-000000000001", Workflow: "shipping", CreatedAt: time.Now(),
		Event:  batuta.Event{ID: id + "/c", Time: time.Now(), Data: []byte(`{"order":1}`)},
		Tasks:  []batuta.TaskSpec{{Name: "label"}, {Name: "notify", Deps: []int{0}}},
		Parent: &batuta.RunLink{RunID: id, Task: "c"},
	})
	require.NoError(t, err)
	require.True(t, created)
	start(t, o)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	require.Equal(t, pre, r.Task("c").Child)
	kids, err := o.ListRuns(ctx, batuta.RunFilter{Parent: id, ParentTask: "c"})
	require.NoError(t, err)
	require.Len(t, kids, 1)
	require.Equal(t, int32(1), runs.Load())
}

// A second orchestrator on the same store finishes what the first one,
// stopped while the parent waited, left.
func TestChildWaitSurvivesARestart(t *testing.T) {
	t.Parallel()
	st := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	block := make(chan struct{})
	var entered atomic.Int32
	reached := make(chan struct{}, 8)
	child := func() *batuta.Workflow {
		return &batuta.Workflow{Name: "slow", Tasks: []batuta.Task{{Name: "work", Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
			entered.Add(1)
			reached <- struct{}{}
			select {
			case <-block:
				return "done", nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}}}}
	}
	parent := func() *batuta.Workflow {
		return &batuta.Workflow{Name: "p", Tasks: []batuta.Task{{Name: "c", Child: &batuta.ChildWorkflow{Workflow: "slow"}}}}
	}
	cfg := batuta.Config{Store: st, Logger: quiet, PollInterval: 10 * time.Millisecond, ShutdownGrace: time.Millisecond}
	o1, err := batuta.New(cfg)
	require.NoError(t, err)
	require.NoError(t, o1.Register(parent()))
	require.NoError(t, o1.Register(child()))
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o1.Run(runCtx) }()
	ctx := waitCtx(t)
	id, err := o1.Submit(ctx, "p", batuta.Event{})
	require.NoError(t, err)
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("the child's task never started")
	}
	stop()
	require.NoError(t, <-done)
	r, err := st.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.TaskPending, r.Task("c").State, "the parent task waits in the store")
	require.Equal(t, "run "+r.Task("c").Child, r.Task("c").WaitingFor)

	close(block)
	o2 := setup(t, cfg, parent(), child())
	r, err = o2.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	require.Equal(t, map[string]any{"work": "done"}, r.Task("c").Output)
	kids, err := o2.ListRuns(ctx, batuta.RunFilter{Parent: id})
	require.NoError(t, err)
	require.Len(t, kids, 1)
	require.Equal(t, int32(2), entered.Load(), "the child's task ran again after the restart, in the same child run")
}

func TestRegisterRejectsBadChildAndForEachTasks(t *testing.T) {
	t.Parallel()
	items := func(*batuta.Input) ([]any, error) { return nil, nil }
	cases := []struct {
		name string
		task batuta.Task
		want string
	}{
		{"child with run", batuta.Task{Name: "a", Run: noop, Child: &batuta.ChildWorkflow{Workflow: "x"}}, "Task.Run must be nil with Task.Child"},
		{"child empty name", batuta.Task{Name: "a", Child: &batuta.ChildWorkflow{}}, "Task.Child.Workflow is empty"},
		{"child bad name", batuta.Task{Name: "a", Child: &batuta.ChildWorkflow{Workflow: "a b"}}, "Task.Child.Workflow: name must be"},
		{"child timeout", batuta.Task{Name: "a", Timeout: time.Second, Child: &batuta.ChildWorkflow{Workflow: "x"}}, "Task.Timeout cannot be combined with Task.Child"},
		{"child rate limit", batuta.Task{Name: "a", RateLimit: &batuta.RateLimit{Name: "r", Limit: 1, Per: time.Second}, Child: &batuta.ChildWorkflow{Workflow: "x"}}, "Task.RateLimit and Task.Concurrency cannot be combined with Task.Child"},
		{"child and foreach", batuta.Task{Name: "a", Run: noop, Child: &batuta.ChildWorkflow{Workflow: "x"}, ForEach: &batuta.ForEach{Items: items}}, "Task.Child and Task.ForEach are both set"},
		{"child and signal", batuta.Task{Name: "a", Child: &batuta.ChildWorkflow{Workflow: "x"}, Signal: &batuta.SignalWait{Name: "s"}}, "Task.Signal cannot be combined with Task.Child"},
		{"foreach no items", batuta.Task{Name: "a", Run: noop, ForEach: &batuta.ForEach{}}, "Task.ForEach.Items is nil"},
		{"foreach no run", batuta.Task{Name: "a", ForEach: &batuta.ForEach{Items: items}}, "nil Run func"},
		{"foreach max parallel", batuta.Task{Name: "a", Run: noop, ForEach: &batuta.ForEach{Items: items, MaxParallel: -1}}, "Task.ForEach.MaxParallel must not be negative"},
		{"foreach tolerate", batuta.Task{Name: "a", Run: noop, ForEach: &batuta.ForEach{Items: items, Tolerate: -2}}, "Task.ForEach.Tolerate must be -1"},
		{"foreach delay", batuta.Task{Name: "a", Run: noop, Delay: time.Second, ForEach: &batuta.ForEach{Items: items}}, "Task.Delay cannot be combined with Task.Child or Task.ForEach"},
		{"foreach item retry", batuta.Task{Name: "a", Run: noop, Retry: batuta.RetryPolicy{MaxAttempts: -1}, ForEach: &batuta.ForEach{Items: items}}, "Retry.MaxAttempts must not be negative"},
		{"foreach long name", batuta.Task{Name: strings.Repeat("t", 125), Run: noop, ForEach: &batuta.ForEach{Items: items}}, "is longer than 128 bytes"},
	}
	for _, tc := range cases {
		o, err := batuta.New(batuta.Config{Logger: quiet})
		require.NoError(t, err)
		err = o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{tc.task}})
		require.ErrorIs(t, err, batuta.ErrInvalidWorkflow, tc.name)
		require.Contains(t, err.Error(), tc.want, tc.name)
	}

	// The hidden item workflow's name is taken: nothing is registered.
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "w.each.item", Tasks: []batuta.Task{{Name: "a", Run: noop}}}))
	err = o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "each", Run: noop, ForEach: &batuta.ForEach{Items: items}}}})
	require.ErrorIs(t, err, batuta.ErrInvalidWorkflow)
	require.Contains(t, err.Error(), `hidden item workflow "w.each.item"`)
	_, err = o.Submit(context.Background(), "w", batuta.Event{})
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow, "nothing was registered")
}

// squares is a fan-out workflow: items 0..n-1 from the event, each item's
// output its square, and a downstream task reading them in order.
func squares(name string, each *batuta.ForEach, body batuta.TaskFunc, got *atomic.Value) *batuta.Workflow {
	if each.Items == nil {
		each.Items = func(in *batuta.Input) ([]any, error) {
			n, err := batuta.EventData[int](in)
			items := make([]any, n)
			for i := range items {
				items[i] = i
			}
			return items, err
		}
	}
	if body == nil {
		body = func(_ context.Context, in *batuta.Input) (any, error) {
			i, err := batuta.EventData[int](in)
			return i * i, err
		}
	}
	return &batuta.Workflow{Name: name, Tasks: []batuta.Task{
		{Name: "each", Run: body, ForEach: each, Retry: batuta.RetryPolicy{MaxAttempts: 1}},
		{Name: "sum", Deps: []string{"each"}, Run: func(_ context.Context, in *batuta.Input) (any, error) {
			outs, err := batuta.ItemOutputs[*int](in, "each")
			if got != nil {
				got.Store(outs)
			}
			return len(outs), err
		}},
	}}
}

func TestForEachCollectsOutputsInOrder(t *testing.T) {
	t.Parallel()
	var got atomic.Value
	o := setup(t, batuta.Config{PollInterval: 10 * time.Millisecond}, squares("sq", &batuta.ForEach{}, nil, &got))
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "sq", batuta.Event{Data: []byte("50")})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	outs := got.Load().([]*int)
	require.Len(t, outs, 50)
	for i, v := range outs {
		require.NotNil(t, v, i)
		require.Equal(t, i*i, *v, i)
	}
	each := r.Task("each")
	require.Equal(t, "50 items", each.WaitingFor)
	sq, err := batuta.ItemOutputsAs[int](each.Output)
	require.NoError(t, err)
	require.Len(t, sq, 50)
	require.Equal(t, 49*49, sq[49])

	items, err := o.ListRuns(ctx, batuta.RunFilter{Parent: id, ParentTask: "each", Ascending: true, Limit: 1000})
	require.NoError(t, err)
	require.Len(t, items, 50)
	for i, it := range items {
		require.Equal(t, batuta.ItemWorkflow("sq", "each"), it.Workflow)
		require.Equal(t, "sq.each.item", it.Workflow)
		require.Equal(t, fmt.Sprintf("%s/each/%d", id, i), it.Event.ID)
		require.Equal(t, fmt.Sprintf("%d/50", i), it.Event.Metadata["batuta-item"])
		require.Equal(t, &batuta.RunLink{RunID: id, Task: "each"}, it.Parent)
	}
	mine, err := o.ListRuns(ctx, batuta.RunFilter{Workflow: "sq"})
	require.NoError(t, err)
	require.Len(t, mine, 1, "the item runs are listed under their own workflow")
}

func TestForEachMaxParallel(t *testing.T) {
	t.Parallel()
	const limit = 3
	var cur, peak atomic.Int32
	var mu sync.Mutex
	full := sync.NewCond(&mu)
	body := func(ctx context.Context, in *batuta.Input) (any, error) {
		n := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		i, err := batuta.EventData[int](in)
		mu.Lock()
		full.Broadcast()
		if i < limit {
			// The first items hold their slot until limit items ran at
			// once: so the peak is reached while they hold it, and an
			// item past the cap would be seen.
			for peak.Load() < limit && ctx.Err() == nil {
				full.Wait()
			}
		}
		mu.Unlock()
		return i, err
	}
	stopWake := context.AfterFunc(t.Context(), func() { mu.Lock(); full.Broadcast(); mu.Unlock() })
	defer stopWake()
	o := setup(t, batuta.Config{Workers: 16, PollInterval: 10 * time.Millisecond},
		squares("par", &batuta.ForEach{MaxParallel: limit}, body, nil))
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "par", batuta.Event{Data: []byte("40")})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	require.Equal(t, int32(limit), peak.Load(), "at most MaxParallel items ran at once, and that many did")
	require.Equal(t, 40, r.Task("sum").Output)
}

func TestForEachTolerate(t *testing.T) {
	t.Parallel()
	body := func(_ context.Context, in *batuta.Input) (any, error) {
		i, err := batuta.EventData[int](in)
		if i%4 == 3 {
			return nil, batuta.Permanent(fmt.Errorf("item %d is bad", i))
		}
		return i, err
	}
	var got atomic.Value
	hooks := &errHooks{}
	o := setup(t, batuta.Config{PollInterval: 10 * time.Millisecond, Hooks: []batuta.Hooks{hooks}},
		squares("tol", &batuta.ForEach{Tolerate: 3}, body, &got),
		squares("strict", &batuta.ForEach{Tolerate: 2}, body, nil),
		squares("any", &batuta.ForEach{Tolerate: -1}, body, nil))
	ctx := waitCtx(t)

	id, err := o.Submit(ctx, "tol", batuta.Event{Data: []byte("12")})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	outs := got.Load().([]*int)
	require.Len(t, outs, 12)
	for i, v := range outs {
		if i%4 == 3 {
			require.Nil(t, v, "a tolerated failure's output is null")
		} else {
			require.Equal(t, i, *v)
		}
	}

	id, err = o.Submit(ctx, "strict", batuta.Event{Data: []byte("12")})
	require.NoError(t, err)
	r, err = o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	each := r.Task("each")
	require.Equal(t, batuta.TaskFailed, each.State)
	require.Contains(t, each.Error, "3 of 12 items of task each failed (tolerated: 2): item 3 (run ")
	require.Contains(t, each.Error, "item 3 is bad")
	require.Contains(t, each.Error, "item 11 is bad")
	var ie *batuta.ItemsError
	require.ErrorAs(t, hooks.err(t, "strict/each"), &ie)
	require.ErrorIs(t, hooks.err(t, "strict/each"), batuta.ErrChildFailed)
	require.Equal(t, 3, ie.Failed)
	require.Equal(t, 12, ie.Total)
	require.Equal(t, []int{3, 7, 11}, []int{ie.First[0].Index, ie.First[1].Index, ie.First[2].Index})
	require.Equal(t, batuta.TaskUpstreamFailed, r.Task("sum").State)

	id, err = o.Submit(ctx, "any", batuta.Event{Data: []byte("8")})
	require.NoError(t, err)
	r, err = o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
}

func TestForEachNoItemsSucceedsAtOnce(t *testing.T) {
	t.Parallel()
	var got atomic.Value
	o := setup(t, batuta.Config{}, squares("none", &batuta.ForEach{}, nil, &got))
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "none", batuta.Event{Data: []byte("0")})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	require.Equal(t, []any{}, r.Task("each").Output)
	require.Empty(t, r.Task("each").WaitingFor, "it never waited")
	require.NotNil(t, got.Load())
	require.Empty(t, got.Load().([]*int))
	b, err := json.Marshal(r.Task("each").Output)
	require.NoError(t, err)
	require.Equal(t, "[]", string(b))
}

func TestForEachThousandsOfItems(t *testing.T) {
	t.Parallel()
	const n = 2000
	var got atomic.Value
	o := setup(t, batuta.Config{PollInterval: 10 * time.Millisecond}, squares("big", &batuta.ForEach{MaxParallel: 100}, nil, &got))
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "big", batuta.Event{Data: []byte(fmt.Sprint(n))})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	outs := got.Load().([]*int)
	require.Len(t, outs, n)
	for i, v := range outs {
		require.Equal(t, i*i, *v, i)
	}
	require.Equal(t, n, r.Task("sum").Output)
}

func TestCancelingAFanOutCancelsItsItems(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 100)
	body := func(ctx context.Context, _ *batuta.Input) (any, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	o := setup(t, batuta.Config{PollInterval: 10 * time.Millisecond}, squares("fan", &batuta.ForEach{MaxParallel: 2}, body, nil))
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "fan", batuta.Event{Data: []byte("10")})
	require.NoError(t, err)
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("no item started")
	}
	require.NoError(t, o.Cancel(ctx, id))
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, r.State)
	items, err := o.ListRuns(ctx, batuta.RunFilter{Parent: id, Limit: 100})
	require.NoError(t, err)
	require.Len(t, items, 10)
	for _, it := range items {
		it, err := o.Wait(ctx, it.ID)
		require.NoError(t, err)
		require.Equal(t, batuta.RunCanceled, it.State, it.ID)
	}
}

// Store.RetryRun of a parent (what Orchestrator.Retry does) runs its failed
// child, and its failed items, once more, in the same runs.
func TestRetryOfTheParentReopensItsChildren(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	runs := map[string]int{} // by run: the first run of each fails
	body := func(_ context.Context, in *batuta.Input) (any, error) {
		mu.Lock()
		defer mu.Unlock()
		runs[in.RunID()]++
		if runs[in.RunID()] == 1 {
			return nil, errors.New("first run fails")
		}
		return "ok", nil
	}
	st := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	child := &batuta.Workflow{Name: "once", Tasks: []batuta.Task{{Name: "work", Retry: batuta.RetryPolicy{MaxAttempts: 1}, Run: body}}}
	parent := &batuta.Workflow{Name: "p", Tasks: []batuta.Task{
		{Name: "c", Retry: batuta.RetryPolicy{MaxAttempts: 1}, Child: &batuta.ChildWorkflow{Workflow: "once"}},
		{Name: "each", Retry: batuta.RetryPolicy{MaxAttempts: 1}, Run: body, ForEach: &batuta.ForEach{
			Items: func(*batuta.Input) ([]any, error) { return []any{"a", "b", "c"}, nil }}},
	}}
	o := setup(t, batuta.Config{Store: st, PollInterval: 10 * time.Millisecond}, parent, child)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "p", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	require.Equal(t, batuta.TaskFailed, r.Task("c").State)
	require.Equal(t, batuta.TaskFailed, r.Task("each").State)
	require.Contains(t, r.Task("each").Error, "3 of 3 items of task each failed")

	res, err := st.RetryRun(ctx, id, batuta.RetryParams{Now: time.Now()})
	require.NoError(t, err)
	require.Equal(t, []string{"c", "each"}, res.Reset)
	r, err = o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	require.Equal(t, map[string]any{"work": "ok"}, r.Task("c").Output)
	require.Equal(t, []any{"ok", "ok", "ok"}, r.Task("each").Output)
	kids, err := o.ListRuns(ctx, batuta.RunFilter{Parent: id, Limit: 100})
	require.NoError(t, err)
	require.Len(t, kids, 4, "the same child and item runs, reopened")
	for _, k := range kids {
		require.Equal(t, 1, k.Retries, k.Workflow)
		require.Equal(t, batuta.RunSucceeded, k.State)
	}
}

func TestChildAndForEachInputErrors(t *testing.T) {
	t.Parallel()
	var itemsCalls atomic.Int32
	wfs := []*batuta.Workflow{
		shippingWorkflow(nil),
		{Name: "bad-event", Tasks: []batuta.Task{{Name: "c", Child: &batuta.ChildWorkflow{Workflow: "shipping",
			Event: func(*batuta.Input) (batuta.Event, error) {
				return batuta.Event{}, batuta.Permanent(errors.New("no address"))
			}}}}},
		{Name: "bad-items", Tasks: []batuta.Task{{Name: "each", Run: noop,
			Retry: batuta.RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond},
			ForEach: &batuta.ForEach{Items: func(*batuta.Input) ([]any, error) {
				itemsCalls.Add(1)
				return nil, errors.New("catalog down")
			}}}}},
		{Name: "bad-item", Tasks: []batuta.Task{{Name: "each", Run: noop,
			ForEach: &batuta.ForEach{Items: func(*batuta.Input) ([]any, error) { return []any{1, make(chan int)}, nil }}}}},
	}
	o := setup(t, batuta.Config{PollInterval: 10 * time.Millisecond}, wfs...)
	ctx := waitCtx(t)
	for _, tc := range []struct{ wf, task, want string }{
		{"bad-event", "c", "batuta: Task.Child.Event of task c: no address"},
		{"bad-items", "each", "batuta: Task.ForEach.Items of task each: catalog down"},
		{"bad-item", "each", "invalid payload: task each: item 1 is not JSON-encodable"},
	} {
		id, err := o.Submit(ctx, tc.wf, batuta.Event{})
		require.NoError(t, err)
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunFailed, r.State, tc.wf)
		require.Contains(t, r.Task(tc.task).Error, tc.want, tc.wf)
		kids, err := o.ListRuns(ctx, batuta.RunFilter{Parent: id})
		require.NoError(t, err)
		require.Empty(t, kids, "%s: nothing was started", tc.wf)
	}
	require.Equal(t, int32(2), itemsCalls.Load(), "Items errors are retried per Task.Retry")
}
