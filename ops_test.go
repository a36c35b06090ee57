package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// downstream is a fake downstream API that is down until it is brought
// back up.
type downstream struct{ down atomic.Bool }

func (d *downstream) call(body string) (string, error) {
	if d.down.Load() {
		return "", errors.New("downstream API: 503 Service Unavailable")
	}
	return "pushed " + body, nil
}

// syncWorkflow fetches a body (counting how often), pushes it to the
// downstream API, then audits.
func syncWorkflow(name string, api *downstream, fetched *atomic.Int32) *batuta.Workflow {
	return &batuta.Workflow{Name: name, Tasks: []batuta.Task{
		{Name: "fetch", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			fetched.Add(1)
			return "body of " + in.Event().ID, nil
		}},
		{Name: "push", Deps: []string{"fetch"}, Retry: batuta.RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond},
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				body, err := batuta.Output[string](in, "fetch")
				if err != nil {
					return nil, err
				}
				return api.call(body)
			}},
		{Name: "audit", Deps: []string{"push"}, Run: noop},
	}}
}

func TestRetryResumesFromTheFailedTask(t *testing.T) {
	api := &downstream{}
	api.down.Store(true)
	var fetched atomic.Int32
	o := setup(t, batuta.Config{}, syncWorkflow("sync", api, &fetched))
	ctx := waitCtx(t)

	id, err := o.Submit(ctx, "sync", batuta.Event{ID: "order-1"})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	require.Equal(t, batuta.TaskFailed, r.Task("push").State)
	require.Equal(t, batuta.TaskUpstreamFailed, r.Task("audit").State)
	require.Len(t, r.Task("push").Attempts, 2)

	api.down.Store(false) // the downstream API is back
	require.NoError(t, o.Retry(ctx, id))
	r, err = o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	assert.Equal(t, id, r.ID, "the run keeps its ID")
	assert.Equal(t, 1, r.Retries)
	assert.Equal(t, int32(1), fetched.Load(), "the succeeded upstream task did not run again")
	assert.Equal(t, "body of order-1", r.Task("fetch").Output, "its output was kept")
	assert.Equal(t, "pushed body of order-1", r.Task("push").Output)
	push := r.Task("push")
	require.Len(t, push.Attempts, 3, "the failed attempts are kept, the new one follows")
	assert.Equal(t, batuta.OutcomeFailed, push.Attempts[1].Outcome, "the last attempt before the retry failed")
	assert.Equal(t, batuta.OutcomeSucceeded, push.Attempts[2].Outcome)
	assert.Equal(t, batuta.TaskSucceeded, r.Task("audit").State)

	// A succeeded run is not retried again without FromTask.
	err = o.Retry(ctx, id)
	require.ErrorIs(t, err, batuta.ErrNotRetryable)
	assert.Contains(t, err.Error(), "FromTask")
}

func TestRetryFromTaskForksASucceededRun(t *testing.T) {
	api := &downstream{}
	var fetched atomic.Int32
	o := setup(t, batuta.Config{}, syncWorkflow("sync", api, &fetched))
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "sync", batuta.Event{ID: "order-2"})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)

	require.NoError(t, o.Retry(ctx, id, batuta.FromTask("push")))
	r, err = o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	assert.Equal(t, int32(1), fetched.Load(), "fetch is upstream of push: kept")
	assert.Len(t, r.Task("push").Attempts, 2, "push ran again")
	assert.Len(t, r.Task("audit").Attempts, 2, "audit is downstream of push: ran again")

	err = o.Retry(ctx, id, batuta.FromTask("nope"))
	require.ErrorIs(t, err, batuta.ErrNotRetryable)
	assert.Contains(t, err.Error(), `"push"`, "the error lists the tasks")
}

func TestRetryErrors(t *testing.T) {
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	gate := make(chan struct{})
	blocked := &batuta.Workflow{Name: "blocked", Tasks: []batuta.Task{{Name: "wait", Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
		select {
		case <-gate:
		case <-ctx.Done():
		}
		return nil, nil
	}}}}
	o := setup(t, batuta.Config{Store: store}, blocked)
	t.Cleanup(func() { close(gate) })
	ctx := waitCtx(t)

	err := o.Retry(ctx, "0190a1b2-0000-7000-8000-000000000000")
	require.ErrorIs(t, err, batuta.ErrRunNotFound)

	id, err := o.Submit(ctx, "blocked", batuta.Event{})
	require.NoError(t, err)
	err = o.Retry(ctx, id)
	require.ErrorIs(t, err, batuta.ErrNotRetryable, "an unfinished run")
	assert.Contains(t, err.Error(), "cancel it first")

	// Another process sharing the store without the workflow.
	other, err := batuta.New(batuta.Config{Store: store, Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Cancel(ctx, id))
	err = other.Retry(ctx, id)
	require.ErrorIs(t, err, batuta.ErrUnknownWorkflow)
}

// failingRuns submits n runs of "sync" with the API down and waits until
// they all failed.
func failingRuns(t *testing.T, o *batuta.Orchestrator, n int) []string {
	t.Helper()
	ctx := waitCtx(t)
	evs := make([]batuta.Event, n)
	for i := range evs {
		evs[i] = batuta.Event{ID: fmt.Sprintf("order-%d", i), Subject: "customer-7"}
	}
	ids, err := o.SubmitMany(ctx, "sync", evs)
	require.NoError(t, err)
	for _, id := range ids {
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunFailed, r.State)
	}
	return ids
}

func TestRetryRunsInBatchesWithProgress(t *testing.T) {
	api := &downstream{}
	api.down.Store(true)
	var fetched atomic.Int32
	o := setup(t, batuta.Config{Workers: 8}, syncWorkflow("sync", api, &fetched))
	ctx := waitCtx(t)
	ids := failingRuns(t, o, 250)
	require.Equal(t, int32(250), fetched.Load())

	api.down.Store(false)
	var progress []batuta.BulkResult
	res, err := o.RetryRuns(ctx, batuta.RunFilter{Workflow: "sync", State: batuta.RunFailed, ErrorContains: "503"},
		batuta.BatchSize(100), batuta.WithProgress(func(r batuta.BulkResult) { progress = append(progress, r) }))
	require.NoError(t, err)
	assert.Equal(t, batuta.BulkResult{Matched: 250, Done: 250}, res)
	require.Equal(t, []batuta.BulkResult{{Matched: 100, Done: 100}, {Matched: 200, Done: 200}, {Matched: 250, Done: 250}}, progress)
	for _, id := range ids {
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	assert.Equal(t, int32(250), fetched.Load(), "no upstream task ran again")

	// Idempotent: nothing is failed any more.
	res, err = o.RetryRuns(ctx, batuta.RunFilter{Workflow: "sync"})
	require.NoError(t, err)
	assert.Equal(t, batuta.BulkResult{}, res)
}

func TestRetryRunsStopsOnContext(t *testing.T) {
	api := &downstream{}
	api.down.Store(true)
	var fetched atomic.Int32
	o := setup(t, batuta.Config{}, syncWorkflow("sync", api, &fetched))
	failingRuns(t, o, 30)
	ctx, cancel := context.WithCancel(waitCtx(t))
	res, err := o.RetryRuns(ctx, batuta.RunFilter{Workflow: "sync"}, batuta.BatchSize(10),
		batuta.WithProgress(func(batuta.BulkResult) { cancel() }))
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, batuta.BulkResult{Matched: 10, Done: 10}, res, "it stopped after the first batch")
}

func TestCancelRuns(t *testing.T) {
	var ran atomic.Int32
	wf := &batuta.Workflow{Name: "later", Tasks: []batuta.Task{{Name: "t", Run: func(context.Context, *batuta.Input) (any, error) {
		ran.Add(1)
		return nil, nil
	}}}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)

	// A filter that selects nothing is not an error.
	res, err := o.CancelRuns(ctx, batuta.RunFilter{Workflow: "later"})
	require.NoError(t, err)
	assert.Equal(t, batuta.BulkResult{}, res)

	evs := make([]batuta.Event, 25)
	for i := range evs {
		evs[i].Subject = "tenant-a"
		if i >= 20 {
			evs[i].Subject = "tenant-b"
		}
	}
	ids, err := o.SubmitMany(ctx, "later", evs, batuta.StartAfter(time.Hour))
	require.NoError(t, err)
	res, err = o.CancelRuns(ctx, batuta.RunFilter{Workflow: "later", Subject: "tenant-a"}, batuta.BatchSize(7))
	require.NoError(t, err)
	assert.Equal(t, batuta.BulkResult{Matched: 20, Done: 20}, res)
	for i, id := range ids {
		r, err := o.GetRun(ctx, id)
		require.NoError(t, err)
		if i < 20 {
			assert.Equal(t, batuta.RunCanceled, r.State)
		} else {
			assert.Equal(t, batuta.RunPending, r.State, "another subject")
		}
	}
	// Idempotent.
	res, err = o.CancelRuns(ctx, batuta.RunFilter{Workflow: "later", Subject: "tenant-a"})
	require.NoError(t, err)
	assert.Equal(t, batuta.BulkResult{}, res)
	// A canceled run is retryable: its reset tasks are due at once (the
	// run's start time is not kept).
	require.NoError(t, o.Retry(ctx, ids[0]))
	r, err := o.Wait(ctx, ids[0])
	require.NoError(t, err)
	assert.Equal(t, batuta.RunSucceeded, r.State)
	assert.Equal(t, int32(1), ran.Load())
}

// failureLog records the OnFailure calls.
type failureLog struct {
	mu    sync.Mutex
	runs  []*batuta.Run
	calls chan struct{}
}

func (l *failureLog) onFailure(_ context.Context, r *batuta.Run) error {
	l.mu.Lock()
	l.runs = append(l.runs, r)
	l.mu.Unlock()
	l.calls <- struct{}{}
	return nil
}

func (l *failureLog) wait(t *testing.T, n int) []*batuta.Run {
	t.Helper()
	ctx := waitCtx(t)
	for {
		l.mu.Lock()
		got := len(l.runs)
		l.mu.Unlock()
		if got >= n {
			l.mu.Lock()
			defer l.mu.Unlock()
			return append([]*batuta.Run(nil), l.runs...)
		}
		select {
		case <-l.calls:
		case <-ctx.Done():
			t.Fatalf("OnFailure called %d times, want %d", got, n)
		}
	}
}

func TestOnFailureAndDeadLetterRunOncePerFailure(t *testing.T) {
	api := &downstream{}
	api.down.Store(true)
	var fetched atomic.Int32
	wf := syncWorkflow("sync", api, &fetched)
	log := &failureLog{calls: make(chan struct{}, 10)}
	wf.OnFailure = log.onFailure
	dlq := newQueue(t, batuta.MemoryQueueConfig{})
	wf.DeadLetter = batuta.DeadLetterQueue(dlq)
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)

	id, err := o.Submit(ctx, "sync", batuta.Event{ID: "order-9", Data: []byte(`{"n":9}`)})
	require.NoError(t, err)
	runs := log.wait(t, 1)
	require.Equal(t, id, runs[0].ID)
	assert.Equal(t, batuta.RunFailed, runs[0].State, "the snapshot is of the failed run")
	assert.Contains(t, runs[0].Task("push").Error, "503")

	// The dead letter reached the queue, with the run's event.
	ms := waitBrowse(t, dlq, 1)
	dl := batuta.ParseDeadLetterMessage(ms[0].Message)
	assert.Equal(t, "order-9", dl.Event.ID)
	assert.JSONEq(t, `{"n":9}`, string(dl.Event.Data))
	assert.Equal(t, batuta.DeadLetterFailed, dl.Reason)
	assert.Equal(t, id, dl.RunID)
	assert.Equal(t, "sync", dl.Workflow)
	assert.Equal(t, 2, dl.Attempts)

	// The failure's handling is a run of the hidden workflow, once.
	fr, err := o.ListRuns(ctx, batuta.RunFilter{Workflow: batuta.FailureWorkflow("sync"), Subject: id})
	require.NoError(t, err)
	require.Len(t, fr, 1)
	assert.True(t, batuta.IsFailureWorkflow(fr[0].Workflow))

	// Retried and failed again: handled again, once more.
	require.NoError(t, o.Retry(ctx, id))
	runs = log.wait(t, 2)
	assert.Equal(t, 1, runs[1].Retries)
	waitBrowse(t, dlq, 2)
	fr, err = o.ListRuns(ctx, batuta.RunFilter{Workflow: batuta.FailureWorkflow("sync"), Subject: id})
	require.NoError(t, err)
	require.Len(t, fr, 2)
	for _, r := range fr {
		_, err := o.Wait(ctx, r.ID)
		require.NoError(t, err)
	}
	log.mu.Lock()
	assert.Len(t, log.runs, 2, "once per failure")
	log.mu.Unlock()
}

func waitBrowse(t *testing.T, q *batuta.MemoryQueue, n int) []batuta.QueuedMessage {
	t.Helper()
	ctx := waitCtx(t)
	for {
		ms, err := q.Browse(ctx, "", 100)
		require.NoError(t, err)
		if len(ms) >= n {
			return ms
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d messages in the queue, want %d", len(ms), n)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// A process that dies between a run's failure and the submission of its
// failure handling loses nothing: the sweeper of the next process with the
// workflow submits it.
func TestOnFailureSweeperCoversACrash(t *testing.T) {
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	api := &downstream{}
	api.down.Store(true)
	var fetched atomic.Int32
	// The first process runs the workflow without OnFailure: as if it
	// died right after recording the failure.
	first, err := batuta.New(batuta.Config{Store: store, Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, first.Register(syncWorkflow("sync", api, &fetched)))
	ctx := waitCtx(t)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- first.Run(runCtx) }()
	id, err := first.Submit(ctx, "sync", batuta.Event{})
	require.NoError(t, err)
	r, err := first.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	stop()
	require.NoError(t, <-done)

	wf := syncWorkflow("sync", api, &fetched)
	log := &failureLog{calls: make(chan struct{}, 10)}
	wf.OnFailure = log.onFailure
	setup(t, batuta.Config{Store: store}, wf)
	runs := log.wait(t, 1)
	assert.Equal(t, id, runs[0].ID)
}

func TestOnFailureValidation(t *testing.T) {
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "t", Run: noop}},
		OnFailure: func(context.Context, *batuta.Run) error { return nil }, OnFailureRetry: batuta.RetryPolicy{MaxAttempts: -1}}
	require.ErrorIs(t, o.Register(wf), batuta.ErrInvalidWorkflow)
	wf.OnFailureRetry = batuta.RetryPolicy{}
	require.NoError(t, o.Register(wf))
	// The hidden workflow's name is taken.
	err = o.Register(&batuta.Workflow{Name: batuta.FailureWorkflow("w"), Tasks: []batuta.Task{{Name: "t", Run: noop}}})
	require.ErrorIs(t, err, batuta.ErrInvalidWorkflow)
}

// Retrying a parent retries its failed children first; a child whose
// parent finished is not retried alone. The orchestrator does not run, so
// the runs stay as Retry left them.
func TestRetryChildRuns(t *testing.T) {
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{})
	o, err := batuta.New(batuta.Config{Store: store, Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "parent", Tasks: []batuta.Task{{Name: "spawn", Run: noop}}}))
	require.NoError(t, o.Register(&batuta.Workflow{Name: "child", Tasks: []batuta.Task{{Name: "work", Run: noop}}}))
	ctx := waitCtx(t)
	parent, err := o.Submit(ctx, "parent", batuta.Event{})
	require.NoError(t, err)
	var kids []string
	for i := range 3 {
		id := uuid.Must(uuid.NewV7()).String()
		_, _, err := store.CreateRun(ctx, batuta.NewRun{ID: id, Workflow: "child", Event: batuta.Event{ID: fmt.Sprintf("kid-%d", i)},
			Tasks: []batuta.TaskSpec{{Name: "work"}}, CreatedAt: time.Now(), Parent: &batuta.RunLink{RunID: parent, Task: "spawn"}})
		require.NoError(t, err)
		kids = append(kids, id)
	}
	// An unrelated run is not touched.
	other, err := o.Submit(ctx, "child", batuta.Event{})
	require.NoError(t, err)
	require.NoError(t, o.Cancel(ctx, other))
	// Canceling the parent cancels its children.
	require.NoError(t, o.Cancel(ctx, parent))
	for _, k := range kids {
		r, err := o.GetRun(ctx, k)
		require.NoError(t, err)
		require.Equal(t, batuta.RunCanceled, r.State)
	}

	err = o.Retry(ctx, kids[0])
	require.ErrorIs(t, err, batuta.ErrNotRetryable, "its parent finished")
	assert.Contains(t, err.Error(), parent, "the error names the parent to retry")

	require.NoError(t, o.Retry(ctx, parent))
	for _, id := range append([]string{parent}, kids...) {
		r, err := o.GetRun(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, batuta.RunPending, r.State, id)
		assert.Equal(t, 1, r.Retries, id)
	}
	r, err := o.GetRun(ctx, other)
	require.NoError(t, err)
	assert.Equal(t, batuta.RunCanceled, r.State, "not a child of the parent")

	// The parent is unfinished now: a child may be retried alone once it
	// finished again.
	require.NoError(t, o.Cancel(ctx, kids[1]))
	require.NoError(t, o.Retry(ctx, kids[1]))
	r, err = o.GetRun(ctx, kids[1])
	require.NoError(t, err)
	assert.Equal(t, 2, r.Retries)
}
