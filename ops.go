package batuta

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// A RetryOption changes what Orchestrator.Retry resets.
type RetryOption func(*retryOptions)

type retryOptions struct{ from string }

// FromTask makes Retry reset the named task and every task downstream of
// it, whatever their state (DBOS's "fork from a step"); a succeeded run can
// be retried this way.
func FromTask(name string) RetryOption { return func(o *retryOptions) { o.from = name } }

// Retry reopens a failed or canceled run: its failed, canceled and
// upstream-failed tasks, and every task downstream of them, run again with
// a fresh retry budget; the tasks that succeeded keep their outputs. The
// run keeps its ID and its history of attempts (Run.Retries counts the
// reopenings). With a Workflow.Timeout the reopened run gets a new
// deadline, Timeout from now. Workers of this process are woken at once;
// those of other processes sharing the store find the work at their next
// poll (or at once through a WorkNotifier store).
//
// Errors (wrapped, match with errors.Is): ErrRunNotFound; ErrNotRetryable
// for a run that is unfinished or succeeded (without FromTask), for a
// FromTask naming no task of the workflow, and for a child run whose
// parent has finished (see below); ErrUnknownWorkflow if this process has
// not registered the run's workflow (it could not run the reopened tasks,
// nor compute their deadline).
//
// Child runs (Task.Child, Task.ForEach): a parent's task counts its
// children's results when they have all finished, and it starts each child
// once (the child's event ID derives from the parent run and task). So:
//   - Retrying a parent first retries, recursively, the failed and
//     canceled child runs of the tasks it is about to reset, then reopens
//     the parent: the reset task finds its children running again and
//     waits for them. Succeeded children keep their result (also with
//     FromTask: retry such a child itself, with FromTask, to redo it).
//   - Retrying a child whose parent is still unfinished (its task waits
//     for its children) reopens the child alone; the parent's task is
//     woken when the child finishes again.
//   - Retrying a child whose parent has finished is refused with
//     ErrNotRetryable naming the parent: retry the parent, which retries
//     the child as above.
func (o *Orchestrator) Retry(ctx context.Context, runID string, opts ...RetryOption) error {
	var ro retryOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&ro)
		}
	}
	if err := o.retry(ctx, runID, ro, 0); err != nil {
		return fmt.Errorf("batuta: retry %s: %w", runID, err)
	}
	return nil
}

// maxRetryDepth bounds the recursion through child runs.
const maxRetryDepth = 16

func (o *Orchestrator) retry(ctx context.Context, runID string, ro retryOptions, depth int) error {
	r, err := o.store.GetRun(ctx, runID)
	if err != nil {
		return err
	}
	cw, err := o.workflow(r.Workflow)
	if err != nil {
		return o.unknownWorkflow(r.Workflow, "Retry")
	}
	reset, err := retryPlan(r, cw, ro.from)
	if err != nil {
		return err
	}
	if depth == 0 && r.Parent != nil {
		p, err := o.store.GetRun(ctx, r.Parent.RunID)
		switch {
		case err == nil && p.Finished():
			return fmt.Errorf("%w: run %s is a child of run %s (task %q), which has %s; retry the parent run, which retries its failed children too",
				ErrNotRetryable, runID, r.Parent.RunID, r.Parent.Task, p.State)
		case err != nil && !errors.Is(err, ErrRunNotFound):
			return err
		}
	}
	// Children first, so that a reset task finds them running again.
	if depth < maxRetryDepth {
		for _, task := range reset {
			if err := o.retryChildren(ctx, runID, task, depth); err != nil {
				return err
			}
		}
	}
	now := o.clock.Now()
	p := RetryParams{From: ro.from, Now: now}
	if cw.timeout > 0 {
		p.Deadline = now.Add(cw.timeout)
	}
	if _, err := o.store.RetryRun(ctx, runID, p); err != nil {
		return err
	}
	if ex := o.ex.Load(); ex != nil {
		ex.poke()
	}
	for _, h := range o.hooks {
		h.RunStarted(ctx, RunInfo{RunID: runID, Workflow: r.Workflow, EventID: r.Event.ID, State: RunPending, Time: now})
	}
	return nil
}

// retryPlan checks that r may be retried and returns the names of the
// tasks RetryRun will reset (as RetryParams says), for the children.
func retryPlan(r *Run, cw *compiledWorkflow, from string) ([]string, error) {
	if from != "" {
		i, ok := cw.index[from]
		if !ok {
			return nil, fmt.Errorf("%w: FromTask(%q): workflow %s has no such task; its tasks: %s",
				ErrNotRetryable, from, cw.name, quoteList(taskNames(cw), maxListed))
		}
		if !r.Finished() {
			return nil, fmt.Errorf("%w: run %s is %s; wait for it to finish or cancel it first", ErrNotRetryable, r.ID, r.State)
		}
		var names []string
		for j := range cw.tasks {
			if j == i || cw.tasks[j].isAncestor(i) {
				names = append(names, cw.tasks[j].name)
			}
		}
		return names, nil
	}
	switch r.State {
	case RunFailed, RunCanceled:
	case RunSucceeded:
		return nil, fmt.Errorf("%w: run %s succeeded; use FromTask to run some of its tasks again", ErrNotRetryable, r.ID)
	default:
		return nil, fmt.Errorf("%w: run %s is %s; wait for it to finish or cancel it first", ErrNotRetryable, r.ID, r.State)
	}
	var names []string
	for _, t := range r.Tasks {
		switch t.State {
		case TaskFailed, TaskCanceled, TaskUpstreamFailed:
			names = append(names, t.Name)
		}
	}
	return names, nil
}

func taskNames(cw *compiledWorkflow) []string {
	names := make([]string, len(cw.tasks))
	for i := range cw.tasks {
		names[i] = cw.tasks[i].name
	}
	return names
}

// retryChildren retries the failed and canceled child runs of a task.
func (o *Orchestrator) retryChildren(ctx context.Context, runID, task string, depth int) error {
	after := ""
	for {
		kids, err := o.store.ListRuns(ctx, RunFilter{
			Parent: runID, ParentTask: task, States: []RunState{RunFailed, RunCanceled},
			Ascending: true, After: after, Limit: 100,
		})
		if err != nil {
			return fmt.Errorf("listing the child runs of task %q: %w", task, err)
		}
		for _, k := range kids {
			if k.Parent == nil || k.Parent.RunID != runID || k.Parent.Task != task {
				continue // a store that ignored the filter
			}
			err := o.retry(ctx, k.ID, retryOptions{}, depth+1)
			if err != nil && !errors.Is(err, ErrNotRetryable) {
				return fmt.Errorf("child run %s of task %q: %w", k.ID, task, err)
			}
		}
		if len(kids) < 100 || kids[len(kids)-1].ID == after {
			return nil
		}
		after = kids[len(kids)-1].ID
	}
}

// BulkResult is what RetryRuns and CancelRuns did.
type BulkResult struct {
	// Matched is how many runs the filter selected; Done how many were
	// retried or canceled; Skipped how many were not (finished meanwhile,
	// not retryable).
	Matched, Done, Skipped int
}

// A BulkOption tunes RetryRuns and CancelRuns.
type BulkOption func(*bulkOptions)

type bulkOptions struct {
	batch    int
	progress func(BulkResult)
	retry    []RetryOption
}

// BatchSize sets how many runs one batch lists and acts on (default 100,
// at most 10000; a value below 1 means the default).
func BatchSize(n int) BulkOption { return func(o *bulkOptions) { o.batch = n } }

// WithProgress calls fn after each batch with the totals so far. It runs
// on the caller's goroutine.
func WithProgress(fn func(BulkResult)) BulkOption { return func(o *bulkOptions) { o.progress = fn } }

// WithRetryOptions passes opts (FromTask) to each Retry of RetryRuns.
func WithRetryOptions(opts ...RetryOption) BulkOption {
	return func(o *bulkOptions) { o.retry = append(o.retry, opts...) }
}

// DefaultBatchSize is the default of BatchSize.
const DefaultBatchSize = 100

// RetryRuns retries (see Retry) every run f selects, in batches: it lists
// a page of runs (f with the After cursor and Limit set to the batch
// size), retries each, reports progress, and goes on from the page's last
// run. Without a state in f it selects the failed and canceled runs. Runs
// that cannot be retried (they finished meanwhile, or are child runs of
// a finished parent) are counted as Skipped; a filter that selects
// nothing is not an error. It is idempotent: a run it reopened is no
// longer failed, so running it again does not retry it twice. A run
// reopened and failed again during the walk is not revisited (the cursor
// moved past it).
//
// It stops at the first other error (the store unreachable, ctx ending)
// and returns it with the totals so far; the runs already retried stay
// retried, so calling it again resumes. f.Limit bounds the total number
// of runs visited (0: no bound); f.After, if set, is where the walk starts.
func (o *Orchestrator) RetryRuns(ctx context.Context, f RunFilter, opts ...BulkOption) (BulkResult, error) {
	if f.State == "" && len(f.States) == 0 {
		f.States = []RunState{RunFailed, RunCanceled}
	}
	bo := bulkOpts(opts)
	var ro retryOptions
	for _, opt := range bo.retry {
		if opt != nil {
			opt(&ro)
		}
	}
	res, err := o.bulk(ctx, f, bo, func(r *Run) (bool, error) {
		if err := o.retry(ctx, r.ID, ro, 0); err != nil {
			if errors.Is(err, ErrNotRetryable) || errors.Is(err, ErrRunNotFound) {
				return false, nil // finished meanwhile, or pruned
			}
			return false, fmt.Errorf("batuta: retry %s: %w", r.ID, err)
		}
		return true, nil
	})
	if err != nil {
		return res, fmt.Errorf("batuta: RetryRuns: %w", err)
	}
	return res, nil
}

// CancelRuns cancels (see Cancel) every unfinished run f selects, in
// batches, as RetryRuns walks them. Without a state in f it selects the
// unfinished runs (pending and running); finished runs are never changed
// (counted as Skipped if f selects them). Idempotent; a filter that
// selects nothing is not an error.
func (o *Orchestrator) CancelRuns(ctx context.Context, f RunFilter, opts ...BulkOption) (BulkResult, error) {
	if f.State == "" && len(f.States) == 0 {
		f.States = []RunState{RunPending, RunRunning}
	}
	res, err := o.bulk(ctx, f, bulkOpts(opts), func(r *Run) (bool, error) {
		if r.Finished() {
			return false, nil
		}
		changed, err := o.store.CancelRun(ctx, r.ID, "canceled", o.clock.Now())
		if err != nil {
			if errors.Is(err, ErrRunNotFound) {
				return false, nil // pruned meanwhile
			}
			return false, fmt.Errorf("batuta: cancel %s: %w", r.ID, err)
		}
		if !changed {
			return false, nil
		}
		if ex := o.ex.Load(); ex != nil && ex.cancelRun(r.ID) {
			return true, nil // the canceled attempts' workers publish the end
		}
		if fr, err := o.store.GetRun(ctx, r.ID); err == nil && fr.Finished() {
			o.runFinished(ctx, r.ID, fr.Workflow, fr.State)
		}
		return true, nil
	})
	if err != nil {
		return res, fmt.Errorf("batuta: CancelRuns: %w", err)
	}
	return res, nil
}

func bulkOpts(opts []BulkOption) bulkOptions {
	var bo bulkOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&bo)
		}
	}
	if bo.batch < 1 {
		bo.batch = DefaultBatchSize
	}
	bo.batch = min(bo.batch, 10000)
	return bo
}

// bulk walks the runs f selects page by page (keyset pagination on the
// run ID, in f's order) and calls act on each: done reports whether it
// acted.
func (o *Orchestrator) bulk(ctx context.Context, f RunFilter, bo bulkOptions, act func(*Run) (bool, error)) (BulkResult, error) {
	var res BulkResult
	total := f.Limit
	f.States = slices.Clone(f.States)
	for {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		f.Limit = bo.batch
		if total > 0 {
			f.Limit = min(f.Limit, total-res.Matched)
		}
		page, err := o.store.ListRuns(ctx, f)
		if err != nil {
			return res, fmt.Errorf("listing runs: %w", err)
		}
		for _, r := range page {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			res.Matched++
			done, err := act(r)
			if err != nil {
				res.Skipped++
				return res, err
			}
			if done {
				res.Done++
			} else {
				res.Skipped++
			}
		}
		if len(page) > 0 && bo.progress != nil {
			bo.progress(res)
		}
		if len(page) < f.Limit || total > 0 && res.Matched >= total {
			return res, nil
		}
		if page[len(page)-1].ID == f.After {
			return res, fmt.Errorf("the store listed run %s again after it (it ignores RunFilter.After)", f.After)
		}
		f.After = page[len(page)-1].ID
	}
}
