package batuta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Child workflows and dynamic fan-out (docs/children.md).
//
// A task with Task.Child or Task.ForEach starts child runs and waits for
// them holding no worker: on its first claim it creates the child run (or
// one run per item) with NewRun.Parent naming the task, then hands itself
// back to the store with OutcomeWait. The store makes the task due again
// when its last child run finishes; that claim reads the children and
// finishes the task with their outcome. Every child's Event.ID is derived
// from the parent run and task (and, for an item, its index), so a retry,
// a crash or a second orchestrator never creates a second child: the
// store's dedupe returns the existing one.

// ChildWorkflow makes a task run another workflow (Task.Child).
//
// The task creates one run of Workflow (its Run.Parent names the task; the
// task's TaskRun.Child names the run) and finishes with the child's
// outcome: succeeded, with an output mapping each of the child's
// succeeded tasks to its output (map[string]any with the in-memory store,
// the JSON object of them with a durable one; read one with ChildOutput,
// or the whole with Output into a struct whose fields are the child's
// task names); failed or canceled, with a *ChildError (matching
// ErrChildFailed).
//
// Task.Retry.MaxAttempts is how many times the child run may run: a child
// that failed is reopened with Store.RetryRun (its failed tasks run again,
// its succeeded tasks keep their outputs) until it ran MaxAttempts times
// (default 3; 1: never reopened). A child canceled by someone other than
// the parent is not reopened. Orchestrator.Retry of the parent run grants
// the child MaxAttempts more runs. Canceling the parent cancels the child.
//
// The child workflow must be registered in the orchestrator whose worker
// claims the task: it is looked up at the first claim (workflows may be
// registered in any order), and a name that is not registered fails the
// task at once with ErrUnknownWorkflow. A workflow may start itself (or a
// workflow that starts it) as a child: each level is a new run with its
// own derived ID, so recursion is allowed and it is the workflow's job to
// stop it.
type ChildWorkflow struct {
	// Workflow is the child workflow's name; it must be registered in the
	// same orchestrator.
	Workflow string
	// Event builds the child run's event from the task's inputs. Nil: the
	// parent run's event data, with a new ID. The child's Event.ID is
	// always derived from the parent run and task (a retry never starts a
	// second child): an ID set by Event is replaced. An error from Event
	// fails the attempt as a body's error would (retried per Task.Retry
	// unless Permanent).
	Event func(in *Input) (Event, error)
}

// ForEach runs a task once per item (Task.ForEach).
//
// At Register, a task with ForEach adds a hidden workflow named
// "<workflow>.<task>.item" (ItemWorkflow) whose single task, named like
// the task, runs Task.Run with Task.Retry, Task.Timeout, Task.Concurrency
// and Task.RateLimit, and reads its item as its event data (EventData).
// On its first claim the task computes the items and creates one run of
// that workflow per item, in batches of 1000 per store round trip, each
// with Run.Parent naming the task and Event.ID "<run>/<task>/<index>"; a
// run's event Subject and Metadata are the parent event's, plus Metadata
// "batuta-item" = "<index>/<count>". Those runs show in ListRuns like any
// other (filter them by Workflow, or by Parent); do not submit to the
// hidden workflow directly.
//
// The task's output is the items' outputs in item order ([]any with the
// in-memory store, a JSON array with a durable one; read it with
// ItemOutputs), null for a tolerated failure. More failed (or canceled)
// items than Tolerate fail the task with an *ItemsError (matching
// ErrChildFailed) naming the first few; the task itself is not retried
// (each item has its own retries). No items: the task succeeds at once
// with an empty list.
//
// An item's body sees only its item: it cannot read the parent run's
// outputs, so put in the item what it needs. Items must be the same on
// every call for the same inputs (they are computed again after a crash,
// and deduplicated by index).
type ForEach struct {
	// Items computes the items from the task's inputs (the event, upstream
	// outputs). Each item must be JSON-encodable; Run reads it as its
	// event's data (EventData).
	Items func(in *Input) ([]any, error)
	// MaxParallel caps the items running at once (0: no cap).
	MaxParallel int
	// Tolerate is how many items may fail with the task still succeeding
	// (their outputs are null); 0: every item must succeed; -1: any number.
	Tolerate int
}

// ErrChildFailed is matched (errors.Is) by the errors of a child workflow
// task whose child run failed or was canceled (*ChildError) and of a
// fan-out task with too many failed items (*ItemsError).
var ErrChildFailed = errors.New("batuta: child run failed")

// ChildError is the error of a Task.Child task whose child run failed or was
// canceled. The task's TaskRun.Error holds its text; Hooks see the value
// (AttemptInfo.Err).
type ChildError struct {
	Workflow string   // the child workflow
	RunID    string   // the child run
	State    RunState // RunFailed or RunCanceled
	Reason   string   // the child's Run.Error
	Runs     int      // how many times the child ran (1 + its Run.Retries)
}

func (e *ChildError) Error() string {
	s := fmt.Sprintf("batuta: child run %s of workflow %s %s", e.RunID, e.Workflow, e.State)
	if e.Runs > 1 {
		s += fmt.Sprintf(" (ran %d times)", e.Runs)
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Is makes errors.Is(err, ErrChildFailed) true.
func (e *ChildError) Is(target error) bool { return target == ErrChildFailed }

// ItemsError is the error of a Task.ForEach task with more failed items than
// ForEach.Tolerate allows.
type ItemsError struct {
	Task     string
	Total    int // items
	Failed   int // items whose run failed or was canceled
	Tolerate int
	// First lists the first failed items (at most 5), by index.
	First []ItemFailure
}

// ItemFailure is one failed item of an ItemsError.
type ItemFailure struct {
	Index  int
	RunID  string
	State  RunState
	Reason string // the item run's Run.Error
}

func (e *ItemsError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "batuta: %d of %d items of task %s failed (tolerated: %d)", e.Failed, e.Total, e.Task, max(e.Tolerate, 0))
	for i, f := range e.First {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "item %d (run %s) %s", f.Index, f.RunID, f.State)
		if f.Reason != "" {
			b.WriteString(": ")
			b.WriteString(clipReason(f.Reason))
		}
	}
	if n := e.Failed - len(e.First); n > 0 {
		fmt.Fprintf(&b, "; and %d more", n)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrChildFailed) true.
func (e *ItemsError) Is(target error) bool { return target == ErrChildFailed }

func clipReason(s string) string {
	const n = 200
	if len(s) <= n {
		return s
	}
	k := n
	for k > 0 && !utf8.RuneStart(s[k]) {
		k--
	}
	return s[:k] + "..."
}

// ItemWorkflow returns the name of the hidden workflow that runs the items
// of the fan-out task task of workflow (see ForEach).
func ItemWorkflow(workflow, task string) string { return workflow + "." + task + ".item" }

// ItemOutputs returns the output of task, a ForEach ancestor of the running
// task, as a []T in item order (a tolerated failure is T's zero value: use
// a pointer T to tell it apart), whichever store produced it.
func ItemOutputs[T any](in *Input, task string) ([]T, error) {
	v, err := Output[any](in, task)
	if err != nil {
		return nil, err
	}
	return itemsAs[T](v, task)
}

// ItemOutputsAs is ItemOutputs for an output taken from a Run snapshot
// (TaskRun.Output).
func ItemOutputsAs[T any](v any) ([]T, error) { return itemsAs[T](v, "run") }

func itemsAs[T any](v any, task string) ([]T, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case []any:
		out := make([]T, len(x))
		for i, e := range x {
			t, err := convertLoose[T](e, fmt.Sprintf("%s[%d]", task, i))
			if err != nil {
				return nil, err
			}
			out[i] = t
		}
		return out, nil
	}
	return convertOutput[[]T](v, task)
}

// convertLoose is convertOutput, and for a Go value of another type (the
// in-memory store keeps the values the bodies returned) a conversion
// through JSON: an int item read as a *int, a struct as a map.
func convertLoose[T any](v any, what string) (T, error) {
	var zero T
	if t, ok := v.(T); ok || v == nil {
		return t, nil
	}
	if _, ok := v.(json.RawMessage); ok {
		return convertOutput[T](v, what)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return zero, fmt.Errorf("%w: output of %q is a %T, not a %T: %w", ErrTypeMismatch, what, v, zero, err)
	}
	var t T
	if err := json.Unmarshal(b, &t); err != nil {
		return zero, fmt.Errorf("%w: output of %q is a %T, not a %T: %w", ErrTypeMismatch, what, v, zero, err)
	}
	return t, nil
}

// ChildOutput returns the output of childTask in the child run of task, a
// Task.Child ancestor of the running task, as a T, whichever store
// produced it. ErrNoOutput if the child run has no output for childTask.
func ChildOutput[T any](in *Input, task, childTask string) (T, error) {
	var zero T
	v, err := Output[any](in, task)
	if err != nil {
		return zero, err
	}
	return childOutputAs[T](v, task, childTask)
}

// ChildOutputAs is ChildOutput for an output taken from a Run snapshot
// (TaskRun.Output).
func ChildOutputAs[T any](v any, childTask string) (T, error) {
	return childOutputAs[T](v, "run", childTask)
}

func childOutputAs[T any](v any, task, childTask string) (T, error) {
	var zero T
	what := task + "." + childTask
	switch x := v.(type) {
	case map[string]any:
		o, ok := x[childTask]
		if !ok {
			return zero, fmt.Errorf("%w: output of %q: the child run has no output for task %q", ErrNoOutput, task, childTask)
		}
		return convertLoose[T](o, what)
	case json.RawMessage:
		var m map[string]json.RawMessage
		if err := json.Unmarshal(x, &m); err != nil {
			return zero, fmt.Errorf("%w: output of %q is not a child run's outputs: %w", ErrTypeMismatch, task, err)
		}
		o, ok := m[childTask]
		if !ok {
			return zero, fmt.Errorf("%w: output of %q: the child run has no output for task %q", ErrNoOutput, task, childTask)
		}
		return convertOutput[T](o, what)
	}
	return zero, fmt.Errorf("%w: output of %q is a %T, not a child run's outputs", ErrTypeMismatch, task, v)
}

// subTask is the compiled form of a Task.Child or Task.ForEach task (or the
// body of a hidden item workflow).
type subTask struct {
	child  *ChildWorkflow
	each   *ForEach
	itemWf *compiledWorkflow // each: the hidden item workflow
	item   bool              // the single task of a hidden item workflow
}

// itemBatch is how many item runs one CreateRuns records.
const itemBatch = 1000

// itemMeta is the Metadata key of an item run's "<index>/<count>".
const itemMeta = "batuta-item"

// compileSubTask validates the Child and ForEach fields of t and fills
// ct.sub; a ForEach task's Concurrency and RateLimit move to its items.
func compileSubTask(wf *Workflow, t *Task, ct *compiledTask) error {
	if t.Child == nil && t.ForEach == nil {
		return nil
	}
	bad := func(reason string) error { return &WorkflowError{Workflow: wf.Name, Task: t.Name, Reason: reason} }
	other := ""
	switch {
	case t.Signal != nil:
		other = "Task.Signal"
	case t.StartAt != nil:
		other = "Task.StartAt"
	case t.Delay != 0:
		other = "Task.Delay"
	}
	if t.Child != nil {
		c := t.Child
		switch {
		case t.ForEach != nil:
			return bad("Task.Child and Task.ForEach are both set; a task either starts one child workflow or runs once per item: split it in two tasks")
		case t.Run != nil:
			return bad("Task.Run must be nil with Task.Child: the task's work is the child run; drop Run, or move it to a task of the child workflow")
		case other != "":
			return bad(other + " cannot be combined with Task.Child; put the wait in a task of its own, and list it in Task.Deps")
		case t.RateLimit != nil || t.Concurrency != nil:
			return bad("Task.RateLimit and Task.Concurrency cannot be combined with Task.Child (the task only starts the child); limit the child workflow (Workflow.Concurrency) or its tasks instead")
		case t.Timeout != 0:
			return bad("Task.Timeout cannot be combined with Task.Child (the task holds no attempt while the child runs); bound the child with its Workflow.Timeout, or the parent's")
		case c.Workflow == "":
			return bad(`Task.Child.Workflow is empty; name a registered workflow, e.g. Child: &batuta.ChildWorkflow{Workflow: "shipping"}`)
		case !validName(c.Workflow):
			return bad("Task.Child.Workflow: name must be " + nameRule)
		}
		cc := *c
		ct.sub = &subTask{child: &cc}
		return nil
	}
	f := t.ForEach
	name := ItemWorkflow(wf.Name, t.Name)
	switch {
	case f.Items == nil:
		return bad("Task.ForEach.Items is nil; set it to a func(in *batuta.Input) ([]any, error) returning the items")
	case t.Run == nil:
		return bad("Task.Run is nil; with Task.ForEach it is the body run once per item (it reads its item with batuta.EventData)")
	case other != "":
		return bad(other + " cannot be combined with Task.ForEach; put the wait in a task of its own, and list it in Task.Deps")
	case f.MaxParallel < 0:
		return bad(fmt.Sprintf("Task.ForEach.MaxParallel must not be negative (got %d); use e.g. MaxParallel: 5, or 0 for no cap", f.MaxParallel))
	case f.Tolerate < -1:
		return bad(fmt.Sprintf("Task.ForEach.Tolerate must be -1 (any number), 0 or more (got %d)", f.Tolerate))
	case !validName(name):
		return bad(fmt.Sprintf("the hidden item workflow's name %q is longer than 128 bytes; shorten the workflow or task name", name))
	}
	iw, err := compileWorkflow(&Workflow{
		Name:        name,
		StrictInput: wf.StrictInput,
		Tasks: []Task{{
			Name: t.Name, Run: t.Run, Retry: t.Retry, Timeout: t.Timeout,
			Concurrency: t.Concurrency, RateLimit: t.RateLimit,
		}},
	})
	if err != nil {
		var we *WorkflowError
		if errors.As(err, &we) {
			return bad("item workflow: " + we.Reason)
		}
		return err
	}
	iw.tasks[0].sub = &subTask{item: true}
	fc := *f
	ct.sub = &subTask{each: &fc, itemWf: iw}
	ct.conc, ct.rate = nil, nil // they limit the items' attempts
	return nil
}

// hiddenWorkflows returns the hidden item workflows cw's tasks need.
func (cw *compiledWorkflow) hiddenWorkflows() []*compiledWorkflow {
	var ws []*compiledWorkflow
	for i := range cw.tasks {
		if s := cw.tasks[i].sub; s != nil && s.itemWf != nil {
			ws = append(ws, s.itemWf)
		}
	}
	return ws
}

// isItemWorkflow reports whether cw is a hidden item workflow.
func (cw *compiledWorkflow) isItemWorkflow() bool {
	return len(cw.tasks) == 1 && cw.tasks[0].sub != nil && cw.tasks[0].sub.item
}

// childEventID is the Event.ID of the child run of task of run runID.
func childEventID(runID, task string) string { return runID + "/" + task }

// itemEventID is the Event.ID of item i of task of run runID.
func itemEventID(runID, task string, i int) string {
	return runID + "/" + task + "/" + strconv.Itoa(i)
}

// storeRetryDelay is how long a child or fan-out task is handed back after
// a store error (no attempt spent).
const storeRetryDelay = time.Second

// subCall is one claim of a Task.Child or Task.ForEach task being handled.
type subCall struct {
	ex   *executor
	sl   *slot
	c    *Claim
	ct   *compiledTask
	comp *Completion
	now  time.Time
	err  error // the error the task failed with, for Hooks
}

// subStep handles a claim of a Task.Child or Task.ForEach task: it starts
// the children or collects their outcome, and fills comp. It reports
// whether it decided the task (succeeded, failed or retried: an attempt
// Hooks see), with the hooks' ctx and info filled.
func (ex *executor) subStep(sl *slot, c *Claim, ct *compiledTask, comp *Completion, info *AttemptInfo, now time.Time) (bool, context.Context) {
	comp.StartedAt, comp.FinishedAt = now, now
	s := &subCall{ex: ex, sl: sl, c: c, ct: ct, comp: comp, now: now}
	var err error
	if ct.sub.child != nil {
		err = s.child()
	} else if c.WaitingSince.IsZero() {
		err = s.startItems()
	} else {
		err = s.collectItems()
	}
	if err != nil {
		// A store error: hand the task back for a while, spending no
		// attempt (as a rate-limit store error does).
		ex.o.log.Error("batuta: starting or reading child runs failed; deferring the task", "run", c.RunID,
			"task", c.Task, "error", err, "retry_in", storeRetryDelay)
		*comp = Completion{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: OutcomeDefer, RetryAt: now.Add(storeRetryDelay), StartedAt: now, FinishedAt: now}
		ex.addDue(comp.RetryAt)
		ex.poke()
		return false, nil
	}
	switch comp.Outcome {
	case OutcomeWait, OutcomeDefer:
		return false, nil
	}
	*info = AttemptInfo{RunID: c.RunID, Workflow: c.Workflow, Task: c.Task, Attempt: c.Attempt, Started: now}
	ctx := ex.bgCtx
	for _, h := range ex.o.hooks {
		ctx = h.AttemptStarted(ctx, *info)
	}
	if comp.Outcome != OutcomeSucceeded {
		info.Err = s.err
		if info.Err == nil {
			info.Err = errors.New(comp.Error)
		}
	}
	return true, ctx
}

// fail fails the task for good with err.
func (s *subCall) fail(err error) {
	s.err = err
	s.comp.Outcome, s.comp.Error = OutcomeFailed, err.Error()
}

// failBody fails the attempt with err as a body's failure: retried per the
// task's policy unless permanent or the last attempt.
func (s *subCall) failBody(err error) {
	s.fail(err)
	if IsPermanent(err) || s.c.Attempt >= s.ct.retry.MaxAttempts {
		return
	}
	s.comp.Outcome, s.comp.RetryAt = OutcomeRetry, s.now.Add(s.ct.retry.Backoff(s.c.Attempt))
	s.ex.addDue(s.comp.RetryAt)
	s.ex.poke()
}

// succeed finishes the task with output out (encoded for a durable store,
// within the payload cap).
func (s *subCall) succeed(out any) {
	ex, comp := s.ex, s.comp
	comp.Outcome = OutcomeSucceeded
	if !ex.durable {
		comp.Output = out
		return
	}
	b, err := json.Marshal(out)
	switch {
	case err != nil:
		s.fail(fmt.Errorf("batuta: output of task %s is not JSON-encodable: %w", s.c.Task, err))
	case len(b) > ex.o.cfg.MaxPayloadBytes:
		s.fail(&PayloadTooLargeError{What: "output of task " + s.c.Task, Size: len(b), Limit: ex.o.cfg.MaxPayloadBytes})
	default:
		comp.Output = json.RawMessage(b)
	}
}

// wait hands the task back until the store wakes it (its last child
// finished), or the run's deadline (when the deadline check fails it).
func (s *subCall) wait(what, child string) {
	s.comp.Outcome, s.comp.WaitFor, s.comp.Child, s.comp.RetryAt = OutcomeWait, what, child, s.c.RunDeadline
	if !s.c.RunDeadline.IsZero() {
		s.ex.addDue(s.c.RunDeadline)
	}
}

// call calls fn with the task's Input, turning a panic into an error.
func (s *subCall) call(fn func(*Input) error) (err error) {
	sl := s.sl
	sl.in = Input{claim: s.c, task: s.ct, ctx: s.ex.bgCtx, store: s.ex.store}
	defer func() {
		sl.in = Input{}
		if p := recover(); p != nil {
			err = newPanicError(p)
		}
	}()
	return fn(&sl.in)
}

// deadline is a child run's deadline: its own workflow timeout, and the
// parent run's deadline.
func (s *subCall) deadline(cw *compiledWorkflow) time.Time {
	d := time.Time{}
	if cw.timeout > 0 {
		d = s.now.Add(cw.timeout)
	}
	if rd := s.c.RunDeadline; !rd.IsZero() && (d.IsZero() || rd.Before(d)) {
		d = rd
	}
	return d
}

// child handles the child workflow task. A returned error is a store
// error.
func (s *subCall) child() error {
	ex, c := s.ex, s.c
	spec := s.ct.sub.child
	ctx := ex.bgCtx
	cw, _ := ex.o.workflow(spec.Workflow)
	if cw == nil || cw.isItemWorkflow() {
		s.fail(fmt.Errorf("%w: task %s: child workflow %q is not registered in this process; Register it (in every orchestrator that runs workflow %s) before Run",
			ErrUnknownWorkflow, c.Task, spec.Workflow, c.Workflow))
		return nil
	}
	child, err := ex.store.FindRun(ctx, cw.name, childEventID(c.RunID, c.Task))
	switch {
	case errors.Is(err, ErrRunNotFound):
		return s.startChild(cw)
	case err != nil:
		return err
	}
	if c.WaitingSince.IsZero() {
		// Found before the task ever waited (a crash after the child was
		// recorded, or a retry of the parent run): record the wait, and
		// with it the link; the store makes the task due at once if the
		// child has finished.
		s.wait("run "+child.ID, child.ID)
		return nil
	}
	switch child.State {
	case RunSucceeded:
		outs := make(map[string]any, len(child.Tasks))
		for i := range child.Tasks {
			if t := &child.Tasks[i]; t.State == TaskSucceeded {
				outs[t.Name] = t.Output
			}
		}
		s.succeed(outs)
		return nil
	case RunFailed, RunCanceled:
	default:
		s.wait("run "+child.ID, child.ID)
		return nil
	}
	// The child failed or was canceled: reopen it if the budget allows
	// (MaxAttempts runs per generation of the parent run), else fail. A
	// canceled child is reopened only by a retry of the parent.
	parent, err := ex.store.GetRun(ctx, c.RunID)
	if err != nil {
		return err
	}
	allowed := (parent.Retries+1)*s.ct.retry.MaxAttempts - 1
	if child.Retries < allowed && (child.State == RunFailed || child.Retries < parent.Retries) {
		_, err := ex.store.RetryRun(ctx, child.ID, RetryParams{Now: s.now, Deadline: s.deadline(cw)})
		switch {
		case err == nil || errors.Is(err, ErrNotRetryable):
			// Reopened (or it changed meanwhile): wait for it again.
			if err == nil {
				ex.o.log.Info("batuta: child run failed; running it again", "run", c.RunID, "task", c.Task,
					"child", child.ID, "run_number", child.Retries+2)
				ex.poke()
			}
			s.wait("run "+child.ID, child.ID)
			return nil
		case !errors.Is(err, errors.ErrUnsupported): // without RetryRun the failure is final
			return err
		}
	}
	s.fail(&ChildError{Workflow: cw.name, RunID: child.ID, State: child.State, Reason: child.Error, Runs: child.Retries + 1})
	return nil
}

// startChild creates the child run and waits for it.
func (s *subCall) startChild(cw *compiledWorkflow) error {
	ex, c := s.ex, s.c
	ev := c.Event
	if fn := s.ct.sub.child.Event; fn != nil {
		err := s.call(func(in *Input) error {
			var err error
			ev, err = fn(in)
			return err
		})
		if err != nil {
			s.failBody(fmt.Errorf("batuta: Task.Child.Event of task %s: %w", c.Task, err))
			return nil
		}
	}
	ev.ID = childEventID(c.RunID, c.Task)
	var nr NewRun
	if err := ex.o.newRun(&nr, cw, ev, submitOpts{}, s.now); err != nil {
		s.fail(fmt.Errorf("batuta: task %s: the child run's event: %w", c.Task, err))
		return nil
	}
	nr.Parent = &RunLink{RunID: c.RunID, Task: c.Task}
	nr.Debounce = nil // a child is never merged into another run
	nr.MaxActive = 0  // nor refused: its parent holds a place already
	nr.Deadline = s.deadline(cw)
	res, err := ex.store.CreateRuns(ex.bgCtx, []NewRun{nr})
	if err != nil {
		return err
	}
	if len(res) != 1 {
		return fmt.Errorf("the store answered %d results for 1 run", len(res))
	}
	ex.o.created(ex.bgCtx, &nr, res[0], s.now)
	s.wait("run "+res[0].ID, res[0].ID)
	return nil
}

// startItems computes the items, creates their runs and waits for them.
func (s *subCall) startItems() error {
	ex, c := s.ex, s.c
	sub := s.ct.sub
	var items []any
	err := s.call(func(in *Input) error {
		var err error
		items, err = sub.each.Items(in)
		return err
	})
	if err != nil {
		s.failBody(fmt.Errorf("batuta: Task.ForEach.Items of task %s: %w", c.Task, err))
		return nil
	}
	if len(items) == 0 {
		s.succeed([]any{})
		return nil
	}
	iw := sub.itemWf
	var conc *ConcurrencySpec
	if sub.each.MaxParallel > 0 {
		conc = &ConcurrencySpec{Key: flowKey(iw.name, c.RunID), Max: sub.each.MaxParallel}
	}
	parent := &RunLink{RunID: c.RunID, Task: c.Task}
	deadline := s.deadline(iw)
	count := strconv.Itoa(len(items))
	// Build every run before creating any: a bad item starts none.
	nrs := make([]NewRun, len(items))
	for i, it := range items {
		data, err := json.Marshal(it)
		if err != nil {
			s.fail(fmt.Errorf("%w: task %s: item %d is not JSON-encodable: %w", ErrInvalidPayload, c.Task, i, err))
			return nil
		}
		md := make(map[string]string, len(c.Event.Metadata)+1)
		for k, v := range c.Event.Metadata {
			md[k] = v
		}
		md[itemMeta] = strconv.Itoa(i) + "/" + count
		ev := Event{ID: itemEventID(c.RunID, c.Task, i), Source: c.Event.Source, Type: c.Event.Type,
			Subject: c.Event.Subject, Time: s.now, Data: data, Metadata: md}
		nr := &nrs[i]
		if err := ex.o.newRun(nr, iw, ev, submitOpts{}, s.now); err != nil {
			s.fail(fmt.Errorf("batuta: task %s: item %d: %w", c.Task, i, err))
			return nil
		}
		nr.Parent, nr.Concurrency, nr.Deadline, nr.MaxActive = parent, conc, deadline, 0
	}
	existing := false
	for lo := 0; lo < len(nrs); lo += itemBatch {
		batch := nrs[lo:min(lo+itemBatch, len(nrs))]
		res, err := ex.store.CreateRuns(ex.bgCtx, batch)
		if err != nil {
			return err
		}
		if len(res) != len(batch) {
			return fmt.Errorf("the store answered %d results for %d runs", len(res), len(batch))
		}
		for i := range res {
			if res[i].Created {
				ex.o.created(ex.bgCtx, &batch[i], res[i], s.now)
			} else {
				existing = true
			}
		}
	}
	if existing {
		// Items from before: a crash, a store error, or Orchestrator.Retry
		// of the parent, which grants failed items one more run each.
		if err := s.reopenItems(deadline); err != nil {
			return err
		}
	}
	s.wait(count+" items", "")
	return nil
}

// reopenItems reopens the failed or canceled items of the task that were
// not yet reopened for the parent run's current generation (Run.Retries).
func (s *subCall) reopenItems(deadline time.Time) error {
	ex, c := s.ex, s.c
	ctx := ex.bgCtx
	parent, err := ex.store.GetRun(ctx, c.RunID)
	if err != nil {
		return err
	}
	if parent.Retries == 0 {
		return nil
	}
	f := RunFilter{Parent: c.RunID, ParentTask: c.Task, States: []RunState{RunFailed, RunCanceled}, Ascending: true, Limit: itemBatch}
	for {
		runs, err := ex.store.ListRuns(ctx, f)
		if err != nil {
			return err
		}
		for _, r := range runs {
			if r.Retries >= parent.Retries {
				continue
			}
			if _, err := ex.store.RetryRun(ctx, r.ID, RetryParams{Now: s.now, Deadline: deadline}); err != nil && !errors.Is(err, ErrNotRetryable) {
				return err
			}
		}
		if len(runs) < f.Limit {
			ex.poke()
			return nil
		}
		f.After = runs[len(runs)-1].ID
	}
}

// collectItems reads the item runs: waits again if one is unfinished, else
// finishes the task with their outputs in item order.
func (s *subCall) collectItems() error {
	ex, c := s.ex, s.c
	f := RunFilter{Parent: c.RunID, ParentTask: c.Task, Ascending: true, Limit: itemBatch}
	var outs []any
	var seen []bool
	total, failed := -1, 0
	var fails []ItemFailure
	for {
		runs, err := ex.store.ListRuns(ex.bgCtx, f)
		if err != nil {
			return err
		}
		for _, r := range runs {
			if !r.Finished() {
				s.wait(s.waitingItems(total), "")
				return nil
			}
			idx, n, ok := itemIndex(r)
			if !ok || (total >= 0 && n != total) || idx >= n {
				s.fail(fmt.Errorf("batuta: task %s: child run %s is not one of its items (event %q)", c.Task, r.ID, r.Event.ID))
				return nil
			}
			if total < 0 {
				total = n
				outs, seen = make([]any, n), make([]bool, n)
			}
			if seen[idx] {
				continue
			}
			seen[idx] = true
			if r.State == RunSucceeded && len(r.Tasks) > 0 {
				outs[idx] = r.Tasks[0].Output
				continue
			}
			failed++
			if len(fails) < 5 {
				fails = append(fails, ItemFailure{Index: idx, RunID: r.ID, State: r.State, Reason: r.Error})
			}
		}
		if len(runs) < f.Limit {
			break
		}
		f.After = runs[len(runs)-1].ID
	}
	if total < 0 {
		s.fail(fmt.Errorf("batuta: task %s: its item runs are missing (pruned before the task collected them?); keep finished runs longer than the longest fan-out", c.Task))
		return nil
	}
	for i, ok := range seen {
		if !ok {
			s.fail(fmt.Errorf("batuta: task %s: the run of item %d of %d is missing (pruned before the task collected it?); keep finished runs longer than the longest fan-out", c.Task, i, total))
			return nil
		}
	}
	if tol := s.ct.sub.each.Tolerate; failed > 0 && tol >= 0 && failed > tol {
		s.fail(&ItemsError{Task: c.Task, Total: total, Failed: failed, Tolerate: tol, First: fails})
		return nil
	}
	if ex.durable {
		// Failed items' outputs are nil: null in the array.
		for i, o := range outs {
			if o == nil {
				outs[i] = json.RawMessage("null")
			}
		}
	}
	s.succeed(outs)
	return nil
}

func (s *subCall) waitingItems(total int) string {
	if total > 0 {
		return strconv.Itoa(total) + " items"
	}
	return "items of task " + s.c.Task
}

// itemIndex reads an item run's index and the item count from its event.
func itemIndex(r *Run) (idx, n int, ok bool) {
	v := r.Event.Metadata[itemMeta]
	a, b, found := strings.Cut(v, "/")
	if !found {
		return 0, 0, false
	}
	i, err1 := strconv.Atoi(a)
	k, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil || i < 0 || k <= 0 || !strings.HasSuffix(r.Event.ID, "/"+a) {
		return 0, 0, false
	}
	return i, k, true
}
