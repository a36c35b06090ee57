package batuta

import (
	"context"
	"fmt"
	"time"
)

// RunState is the state of a run.
type RunState string

// The states of a run. A run is pending until its first task is claimed,
// running until every task reached a terminal state, then succeeded (no task
// failed), failed (some task failed or is upstream_failed) or canceled.
//
// An upstream_failed task always has a failed task (or a canceled run)
// upstream of it, so counting it toward RunFailed changes no outcome; the
// stores do it anyway so that a run never reports success while one of its
// tasks was stopped by a failure.
const (
	RunPending   RunState = "pending"
	RunRunning   RunState = "running"
	RunSucceeded RunState = "succeeded"
	RunFailed    RunState = "failed"
	RunCanceled  RunState = "canceled"
)

// Finished reports whether s is a terminal state.
func (s RunState) Finished() bool {
	return s == RunSucceeded || s == RunFailed || s == RunCanceled
}

// TaskState is the state of one task of a run.
type TaskState string

// The states of a task. Pending tasks wait for their dependencies or for
// their next attempt; running tasks are leased to a worker. The others are
// terminal.
const (
	TaskPending   TaskState = "pending"
	TaskRunning   TaskState = "running"
	TaskSucceeded TaskState = "succeeded"
	TaskFailed    TaskState = "failed"
	// TaskSkipped: the task never ran because its join rule was not met
	// for a reason other than a failure (e.g. a OneFailed task whose
	// dependencies all succeeded, or an AllSucceeded task after a skip).
	TaskSkipped TaskState = "skipped"
	// TaskUpstreamFailed: the task never ran because a dependency failed
	// (Airflow's upstream_failed): e.g. an AllSucceeded or NoneFailed task
	// after a failure. Join rules further down count it as a failure.
	TaskUpstreamFailed TaskState = "upstream_failed"
	TaskCanceled       TaskState = "canceled"
)

// Finished reports whether s is a terminal state.
func (s TaskState) Finished() bool {
	return s == TaskSucceeded || s == TaskFailed || s == TaskSkipped || s == TaskCanceled || s == TaskUpstreamFailed
}

// CountsAsFailure reports whether join rules count a dependency in state s
// as failed: failed, upstream_failed or canceled.
func (s TaskState) CountsAsFailure() bool {
	return s == TaskFailed || s == TaskUpstreamFailed || s == TaskCanceled
}

// A Run is a snapshot of one execution of a workflow for one event.
type Run struct {
	ID         string    `json:"id"` // a UUIDv7
	Workflow   string    `json:"workflow"`
	Event      Event     `json:"event"`
	State      RunState  `json:"state"`
	CreatedAt  time.Time `json:"created_at"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// Deadline is when the workflow-level timeout expires (zero: none).
	Deadline time.Time `json:"deadline,omitzero"`
	// StartAt is when the run was asked to start (StartAt, StartAfter,
	// Debounce); zero for a run that could start at once.
	StartAt time.Time `json:"start_at,omitzero"`
	// Priority orders the run's tasks against other runs' (higher first).
	Priority int `json:"priority,omitempty"`
	// ConcurrencyKey is the run's workflow-level concurrency group (see
	// ConcurrencySpec.Key); empty if the workflow has no limit.
	ConcurrencyKey string `json:"concurrency_key,omitempty"`
	// Parent, for a child run (a child workflow or a fan-out item), is the
	// run and task that started it; nil otherwise.
	Parent *RunLink `json:"parent,omitempty"`
	// Retries counts how often the run was reopened by Store.RetryRun.
	Retries int `json:"retries,omitempty"`
	// Error summarises why the run failed or was canceled.
	Error string `json:"error,omitempty"`
	// Tasks lists every task of the run in the workflow's declaration order.
	Tasks []TaskRun `json:"tasks"`
}

// Finished reports whether the run reached a terminal state.
func (r *Run) Finished() bool { return r.State.Finished() }

// Task returns the task named name, or nil.
func (r *Run) Task(name string) *TaskRun {
	for i := range r.Tasks {
		if r.Tasks[i].Name == name {
			return &r.Tasks[i]
		}
	}
	return nil
}

// A TaskRun is the state of one task within a Run snapshot.
type TaskRun struct {
	Name  string    `json:"name"`
	State TaskState `json:"state"`
	// Deps are the names of the task's direct dependencies.
	Deps []string `json:"deps,omitempty"`
	// Output is the task's result once it succeeded: the Go value itself
	// with the in-memory store, a json.RawMessage with durable stores.
	Output any `json:"output,omitempty"`
	// Error is the last attempt's error for a failed task, or why it was
	// skipped, upstream_failed (naming the dependency) or canceled.
	Error string `json:"error,omitempty"`
	// Attempts lists the attempts, oldest first.
	Attempts []Attempt `json:"attempts,omitempty"`
	// Rescues counts how often the task's lease expired while it ran (its
	// worker died or stalled). Counted apart from attempts.
	Rescues int `json:"rescues,omitempty"`
	// NotBefore is, for a pending task, when it may start at the earliest
	// (its run's start time, its next retry, a snooze, a rate-limit
	// reservation or, for a waiting task, when its wait times out or its
	// timer fires); zero when it may start at once, is not pending, or
	// waits with no time limit.
	NotBefore time.Time `json:"not_before,omitzero"`
	// WaitingSince is when the task first handed itself back to wait
	// (OutcomeWait): a timer, a signal, a child run or fan-out items. Zero
	// if it never waited. It is kept once the task finished, as a record.
	WaitingSince time.Time `json:"waiting_since,omitzero"`
	// WaitingFor says what the task waits (or waited) for, as the
	// orchestrator described it in its last OutcomeWait, e.g. "timer",
	// "signal shipped", "run <id>", "120 items".
	WaitingFor string `json:"waiting_for,omitempty"`
	// Child is the run ID of the child workflow run this task started
	// (Completion.Child); empty otherwise. The child's Run.Parent links
	// back.
	Child string `json:"child,omitempty"`
}

// AttemptCount returns how many attempts ran: one per attempt record,
// and one per snooze for a record of snoozes in a row (Attempt.Snoozes).
func (t *TaskRun) AttemptCount() int {
	n := 0
	for _, a := range t.Attempts {
		n += max(a.Snoozes, 1)
	}
	return n
}

// Duration returns the time spent in attempts (snoozes in a row, kept as
// one record, count by the last one's time: see Attempt.Snoozes).
func (t *TaskRun) Duration() time.Duration {
	var d time.Duration
	for _, a := range t.Attempts {
		d += a.FinishedAt.Sub(a.StartedAt)
	}
	return d
}

// An Attempt is one execution of a task.
type Attempt struct {
	// Number counts attempts that spent the retry budget, from 1. A snooze
	// repeats the number.
	Number     int       `json:"number"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	// Outcome is how the attempt ended.
	Outcome Outcome `json:"outcome"`
	// Error is the error the attempt returned ("" on success).
	Error string `json:"error,omitempty"`
	// Snoozes is, on a snooze record, how many snoozes in a row of this
	// attempt number it stands for. Stores keep consecutive snoozes of
	// one number as one record, with the last one's times and error, so
	// that a task polling by snoozing keeps a bounded history (each
	// snooze still reaches Hooks.AttemptFinished). 0 on other outcomes.
	Snoozes int `json:"snoozes,omitempty"`
}

// recordAttempt appends a to a task's attempt records, or, for a snooze
// following a snooze of the same number, replaces that record with a,
// counting both (see Attempt.Snoozes).
func recordAttempt(list []Attempt, a Attempt) []Attempt {
	if a.Outcome != OutcomeSnooze {
		return append(list, a)
	}
	a.Snoozes = 1
	if n := len(list); n > 0 && list[n-1].Outcome == OutcomeSnooze && list[n-1].Number == a.Number {
		a.Snoozes += max(list[n-1].Snoozes, 1)
		list[n-1] = a
		return list
	}
	return append(list, a)
}

// Outcome is how an attempt or a claim ended, as reported to the Store.
type Outcome string

// The outcomes a worker reports to Store.CompleteTasks.
const (
	// OutcomeSucceeded: the task is done; Output is recorded.
	OutcomeSucceeded Outcome = "succeeded"
	// OutcomeFailed: the task failed for good; its dependents are evaluated.
	OutcomeFailed Outcome = "failed"
	// OutcomeRetry: the attempt failed, another attempt starts at RetryAt.
	OutcomeRetry Outcome = "retry"
	// OutcomeSnooze: try again at RetryAt without spending an attempt.
	OutcomeSnooze Outcome = "snooze"
	// OutcomeRelease: the worker hands the task back unrun (shutdown); it
	// is ready again at once, no attempt is spent or recorded.
	OutcomeRelease Outcome = "release"
	// OutcomeDefer: the worker hands the task back unrun, due again at
	// RetryAt (a rate limit); no attempt is spent or recorded. With
	// Completion.RateReserved the next claim reports Claim.RateReserved.
	OutcomeDefer Outcome = "defer"
	// OutcomeWait: the task hands itself back to wait (a timer, a signal,
	// a child run or fan-out items): it becomes pending again, due at
	// RetryAt (zero: never by time, only when woken), holding no worker; no
	// attempt is spent or recorded. The store records WaitFor and Child,
	// and sets TaskRun.WaitingSince to FinishedAt the first time. The task
	// is due at once instead if, when the completion is recorded, (a) its
	// TaskSpec.Signal names a signal already buffered for the run, or (b)
	// runs whose Parent is this run and task exist and all have finished
	// (so a wake that came while the task was claimed is not lost).
	OutcomeWait Outcome = "wait"
	// OutcomeSkipped: the task's join condition was not met; it never ran.
	OutcomeSkipped Outcome = "skipped"
	// OutcomeUpstreamFailed: the task's join condition was not met because
	// a dependency failed; it never ran. The task becomes
	// TaskUpstreamFailed, which counts as a failure for its dependents and
	// for the run, and records no attempt.
	OutcomeUpstreamFailed Outcome = "upstream_failed"
	// OutcomeCanceled: the run was canceled while the task was claimed.
	OutcomeCanceled Outcome = "canceled"
	// OutcomeTimedOut: the attempt exceeded its timeout. Reported as
	// OutcomeRetry or OutcomeFailed; used in Attempt records only.
	OutcomeTimedOut Outcome = "timed_out"
)

// A TaskSpec describes one task of a new run to the Store.
type TaskSpec struct {
	Name string
	// Deps are indexes into NewRun.Tasks of the direct dependencies.
	Deps []int
	// FireOn, if not empty, makes the task ready as soon as one dependency
	// finishes in that class, before the others finished (Task.FireEarly):
	// TaskSucceeded for a succeeded dependency, TaskFailed for one whose
	// state CountsAsFailure. Empty (the default): the task is ready once
	// every dependency finished. A task is made ready at most once: a
	// dependency finishing after it was made ready changes nothing.
	FireOn TaskState
	// Concurrency, if not nil, caps the running attempts of tasks sharing
	// Concurrency.Key (across runs and, for a shared store, processes):
	// the task is claimed only while fewer than Concurrency.Max tasks of
	// that key are running (claimed and not yet completed, released,
	// deferred or rescued). Its Strategy is always ConcurrencyQueue.
	Concurrency *ConcurrencySpec
	// Signal, if not empty, names the signal this task waits for
	// (Store.SendSignal): claims of it carry the oldest signal of that name
	// buffered for the run (Claim.Signal), and a signal sent while the task
	// waits (pending after an OutcomeWait) completes it at once.
	Signal string
}

// ConcurrencyStrategy says what a workflow-level concurrency limit does with
// a run over the limit.
type ConcurrencyStrategy uint8

// The concurrency strategies.
const (
	// ConcurrencyQueue (the default): the run waits, without holding a
	// worker, until its group has room. Waiting runs of one group are
	// admitted in order (priority, then creation); groups with waiting
	// runs are served round-robin, so a busy key cannot starve quiet ones.
	ConcurrencyQueue ConcurrencyStrategy = iota
	// ConcurrencyCancelInProgress: a new run is admitted at once and the
	// oldest unfinished runs of its group are canceled to make room.
	ConcurrencyCancelInProgress
	// ConcurrencyCancelNewest: a new run that finds its group full is
	// recorded as canceled at once (with the reason), and never runs.
	ConcurrencyCancelNewest
)

// String returns the strategy's name as the docs spell it.
func (s ConcurrencyStrategy) String() string {
	switch s {
	case ConcurrencyQueue:
		return "Queue"
	case ConcurrencyCancelInProgress:
		return "CancelInProgress"
	case ConcurrencyCancelNewest:
		return "CancelNewest"
	}
	return fmt.Sprintf("ConcurrencyStrategy(%d)", uint8(s))
}

// A ConcurrencySpec is a concurrency limit as the Store sees it: the key is
// already computed.
type ConcurrencySpec struct {
	// Key names the group sharing Max. The orchestrator prefixes the
	// user's key with the workflow (and task) name, so groups of different
	// workflows never meet. At most 255 bytes.
	Key string
	// Max is the most runs (workflow level: admitted and unfinished) or
	// running attempts (task level) the group holds at once (>= 1).
	Max int
	// Strategy applies to workflow-level limits only.
	Strategy ConcurrencyStrategy
}

// A DebounceSpec makes CreateRun merge events into one pending run.
type DebounceSpec struct {
	// Key names the debounce group within the workflow (at most 255 bytes).
	Key string
	// Window is how long the run waits after the latest event for another.
	Window time.Duration
	// MaxWait bounds the wait from the group's first event (>= Window).
	MaxWait time.Duration
}

// A RateSpec is a rate limit as the Store sees it: at most Limit starts per
// Per for one Key, spaced Per/Limit apart after the first Burst.
//
// It is a generic cell rate algorithm (GCRA): with T = Per/Limit, a start
// at time t is allowed once t >= TAT - (Burst-1)*T, where TAT (the
// theoretical arrival time, one per key) then moves to max(TAT, t) + T. In
// any window of length Per at most Limit + Burst - 1 attempts start.
type RateSpec struct {
	// Key names the limited resource: the RateLimit's Name and, if it has a
	// key function, its value (at most 255 bytes).
	Key   string
	Limit int           // >= 1
	Per   time.Duration // > 0
	Burst int           // >= 1
}

// FiresOn reports whether a dependency finishing in state st makes the task
// ready early (see FireOn).
func (t *TaskSpec) FiresOn(st TaskState) bool {
	switch t.FireOn {
	case TaskSucceeded:
		return st == TaskSucceeded
	case TaskFailed:
		return st.CountsAsFailure()
	}
	return false
}

// NewRun is what Store.CreateRun records.
type NewRun struct {
	ID       string // UUIDv7 chosen by the orchestrator
	Workflow string
	Event    Event // Event.ID is the dedupe key together with Workflow
	// Tasks are the run's tasks in declaration order. The store may keep
	// the slice; the caller never modifies it after CreateRun.
	Tasks []TaskSpec
	// CreatedAt is the orchestrator's clock at submit time.
	CreatedAt time.Time
	// Deadline is the workflow-level timeout (zero: none).
	Deadline time.Time
	// MaxActive, if > 0, makes CreateRun fail with ErrBusy when the store
	// holds MaxActive or more unfinished runs. Distributed stores may
	// enforce it approximately.
	MaxActive int
	// StartAt, if after CreatedAt, is when the run may start: no task of
	// it is claimed before. The run stays pending meanwhile (it can be
	// found, listed, canceled and deduplicated like any other run).
	StartAt time.Time
	// Priority: ready tasks of runs with a higher priority are claimed
	// first; equal priorities in the order their tasks became due.
	Priority int
	// Concurrency, if not nil, puts the run under a workflow-level limit.
	// With ConcurrencyQueue a task of the run is claimed only once the run
	// is admitted: the first claim admits it if its group (Key) holds
	// fewer than Max admitted unfinished runs; the run leaves the group
	// when it finishes (however it finishes). With ConcurrencyCancelInProgress
	// CreateRun, atomically with the insert, cancels the oldest unfinished
	// runs of the group (as CancelRun would) until the group, with the
	// new run, holds at most Max (a run already canceled no longer counts,
	// even while a task of it still runs); the new run is admitted. With
	// ConcurrencyCancelNewest, if the group already holds Max unfinished
	// runs, the new run is recorded finished as RunCanceled (every task
	// canceled, Run.Error saying the limit was reached) and CreateResult
	// tells so.
	Concurrency *ConcurrencySpec
	// Parent, if not nil, makes the run a child of that run and task. When
	// a child run finishes (however it finishes: its last task, CancelRun,
	// a rescue that fails it) and no other unfinished run has the same
	// Parent, the parent's task, if pending, becomes due at once (its
	// not-before time is set to the finish time) and workers are signalled
	// (WorkNotifier). CancelRun of the parent cancels its unfinished child
	// runs, recursively, in the same transaction.
	Parent *RunLink
	// Debounce, if not nil, merges the run into a pending run of the same
	// workflow and Debounce.Key if one exists that has not started and
	// whose start time is still in the future (after CreatedAt): that
	// run's Event becomes this Event (so its dedupe key becomes this
	// Event.ID) and its start time becomes min(CreatedAt+Window, its
	// CreatedAt+MaxWait); CreateRun then returns that run's ID with
	// created=false. A duplicate Event.ID is found first, as always.
	// Otherwise the run is created with start time CreatedAt+Window (or
	// StartAt if later).
	Debounce *DebounceSpec
}

// CreateResult is the Store's answer to one NewRun of CreateRuns.
type CreateResult struct {
	// ID is the run's ID: the new run's, or the existing run's for a
	// duplicate Event.ID or a debounced merge.
	ID string
	// Created is false for a duplicate or a debounced merge.
	Created bool
	// Debounced is set when the event was merged into the pending run ID.
	Debounced bool
	// Canceled lists the runs canceled to make room
	// (ConcurrencyCancelInProgress).
	Canceled []string
	// Rejected is set when the new run was recorded canceled at once
	// (ConcurrencyCancelNewest).
	Rejected bool
}

// ClaimParams selects the tasks ClaimTasks leases.
type ClaimParams struct {
	// Owner identifies the claiming worker process.
	Owner string
	// Workflows limits claims to tasks of these workflows (those the
	// claiming orchestrator has registered).
	Workflows []string
	// Limit is the most tasks to claim (> 0).
	Limit int
	// Now is the claimer's clock: tasks whose next attempt is due at or
	// before Now are ready.
	Now time.Time
	// LeaseUntil is when the lease expires unless extended.
	LeaseUntil time.Time
	// Buf, if not nil, is storage the store may reuse for the result
	// (appending to Buf[:0]) to save an allocation. Optional for stores.
	Buf []Claim
}

// A Claim is a task leased to one worker. The Token fences every later write
// about this claim: once the lease expired and the task was rescued, writes
// with the old token fail with ErrLeaseLost.
type Claim struct {
	RunID    string
	Workflow string
	Task     string
	// Attempt is the number of the attempt about to run (spent attempts + 1).
	Attempt int
	// Rescues is how often the task's lease expired before.
	Rescues int
	// Token is the lease token (unique per claim within the store).
	Token int64
	// Event is the run's triggering event.
	Event Event
	// RunDeadline is the workflow-level deadline (zero: none).
	RunDeadline time.Time
	// Upstream holds the state of each direct dependency, in the order of
	// TaskSpec.Deps.
	Upstream []UpstreamResult
	// RateReserved is set when the task's last completion was an
	// OutcomeDefer with RateReserved: it already holds a rate-limit slot
	// for this start and must not take another.
	RateReserved bool
	// WaitingSince is TaskRun.WaitingSince: when the task first handed
	// itself back with OutcomeWait (zero: it never waited yet).
	WaitingSince time.Time
	// Signal is, for a task whose TaskSpec.Signal is set, the oldest
	// signal of that name buffered for the run; nil if none.
	Signal *SignalRecord

	// notBefore, if set, is when the worker starts the task: the executor
	// claimed it ahead of that time (see claimAhead).
	notBefore time.Time
}

// Ref returns the claim's identity for CompleteTasks and ExtendLeases.
func (c *Claim) Ref() ClaimRef { return ClaimRef{RunID: c.RunID, Task: c.Task, Token: c.Token} }

// UpstreamResult is the outcome of one dependency of a claimed task.
type UpstreamResult struct {
	Name   string
	State  TaskState
	Output any // as in TaskRun.Output
	Error  string
}

// ClaimRef names a claimed task and the lease token that fences it.
type ClaimRef struct {
	RunID string
	Task  string
	Token int64
}

// A Completion reports how a claimed task ended.
type Completion struct {
	ClaimRef
	Outcome Outcome
	// Attempt is the attempt number from the Claim.
	Attempt int
	// Output is recorded on OutcomeSucceeded. The orchestrator passes the
	// Go value to a non-durable store and a json.RawMessage to a durable one.
	Output any
	// Error is the attempt's error (failed, retry, snooze), or the reason
	// for skipped, upstream_failed and canceled.
	Error string
	// TimedOut marks an attempt that exceeded its timeout.
	TimedOut bool
	// StartedAt and FinishedAt bound the attempt. FinishedAt is always set
	// (it is the run's finish time if this completion finishes the run);
	// StartedAt is zero for skipped, upstream_failed, canceled and
	// released claims, which
	// record no attempt.
	StartedAt, FinishedAt time.Time
	// RetryAt is when the next attempt is due (OutcomeRetry, OutcomeSnooze,
	// OutcomeDefer).
	RetryAt time.Time
	// RateReserved (OutcomeDefer only): the worker reserved a rate-limit
	// slot at RetryAt for the task's next start; the store keeps the flag
	// and reports it in the next Claim, then forgets it.
	RateReserved bool
	// WaitFor (OutcomeWait) describes what the task waits for; the store
	// keeps it as TaskRun.WaitingFor.
	WaitFor string
	// Child (OutcomeWait) is the child run the task started; the store
	// keeps it as TaskRun.Child (it is not cleared by later completions).
	Child string
	// ConsumeSignal, if not zero, is the Seq of the buffered signal
	// (Claim.Signal) this completion consumed: the store deletes it in the
	// same transaction, only if the completion is accepted.
	ConsumeSignal int64
}

// CompleteResult is the Store's answer to one Completion.
type CompleteResult struct {
	// Err is nil, or ErrLeaseLost when the token no longer owns the task
	// (nothing was written), or another per-item error.
	Err error
	// RunFinished is set when this completion finished the run: the run's
	// final state.
	RunFinished RunState
	// Ready is how many tasks became ready through this completion.
	Ready int
}

// LeaseStatus is the Store's answer to one lease extension.
type LeaseStatus string

// Lease statuses returned by ExtendLeases.
const (
	LeaseHeld     LeaseStatus = "held"     // extended
	LeaseLost     LeaseStatus = "lost"     // token no longer owns the task
	LeaseCanceled LeaseStatus = "canceled" // extended, but the run was canceled: stop the task
)

// RunFilter selects runs for ListRuns. Zero fields do not filter; the
// fields that are set must all match.
type RunFilter struct {
	Workflow string
	State    RunState
	// States, if not empty, selects runs in any of these states (and State,
	// if also set, must be one of them).
	States []RunState
	// EventID and Subject select by the run's event (exact match).
	EventID string
	Subject string
	// CreatedAfter and CreatedBefore bound the run's CreatedAt
	// (inclusive, exclusive).
	CreatedAfter  time.Time
	CreatedBefore time.Time
	// ErrorContains selects runs whose Run.Error contains this text
	// (case-insensitive).
	ErrorContains string
	// Parent selects the child runs of this run ID (and, with ParentTask,
	// of that task of it).
	Parent     string
	ParentTask string
	// Ascending lists oldest first (by ID, a UUIDv7) instead of newest
	// first.
	Ascending bool
	// After is a cursor: only runs strictly after this run ID in the
	// listing order (keyset pagination: pass the last ID of the previous
	// page). A durable store answers a page without scanning the runs
	// before the cursor.
	After string
	// Limit caps the result (0: a store-defined default of 100; at most
	// 10000).
	Limit int
}

// PrunePolicy says which finished runs Prune deletes: those finished before
// Before, and beyond the newest KeepLast finished runs. A zero field does not
// prune by that criterion.
type PrunePolicy struct {
	Before   time.Time
	KeepLast int
	// BatchSize bounds one delete statement, or for the in-memory store
	// one pass under its lock (0: 1000). Prune deletes batch after batch
	// until nothing is left to delete, releasing locks in between.
	BatchSize int
}

// A Store keeps runs, task states, attempts, outputs, dedupe keys, leases and
// schedule state. The in-memory store (NewMemoryStore) is the default; the
// batutasqlite and batutapg modules provide durable ones. Every Store passes
// the conformance suite in package batutatest, which is the full contract;
// the comments here summarise it.
//
// The Store holds the DAG bookkeeping that must be atomic across workers: a
// task becomes ready when every dependency reached a terminal state (the
// store counts them down inside CompleteTasks), or, if its TaskSpec.FireOn
// is set, when the first dependency finished in that class. Whether a ready task runs or
// is skipped (its join condition) is decided by the orchestrator at claim
// time, so join rules live in one place.
//
// All methods are safe for concurrent use, by many orchestrators in the case
// of distributed stores.
type Store interface {
	// Durable reports whether accepted runs survive a process crash.
	Durable() bool

	// CreateRun records a run with all its tasks, atomically. If a run of
	// the same workflow with the same Event.ID exists, it returns that run's
	// ID and created=false, writing nothing; this is enforced by a unique
	// constraint, not check-then-insert. It returns ErrBusy if MaxActive is
	// exceeded.
	CreateRun(ctx context.Context, run NewRun) (id string, created bool, err error)

	// ClaimTasks leases up to p.Limit ready tasks (pending, every dependency
	// finished, next attempt due) of unfinished runs to p.Owner, marks them
	// running and the run running. No task is held by two claims at once.
	ClaimTasks(ctx context.Context, p ClaimParams) ([]Claim, error)

	// ExtendLeases moves the lease expiry of the given claims to until and
	// reports, for each, whether it is still held.
	ExtendLeases(ctx context.Context, refs []ClaimRef, until time.Time) ([]LeaseStatus, error)

	// CompleteTasks records the outcomes of claimed tasks. Each write is
	// fenced by its token: a stale token gets ErrLeaseLost in its result and
	// changes nothing. A terminal outcome counts the task's dependents down;
	// when every task is finished the run finishes: canceled if it was
	// canceled (whatever its tasks did), else failed if any task failed or
	// is upstream_failed, else succeeded.
	CompleteTasks(ctx context.Context, cs []Completion) ([]CompleteResult, error)

	// RescueExpired returns running tasks whose lease expired before now to
	// the ready set, counting a rescue; a task rescued more than maxRescues
	// times fails instead, with the reason recorded. It returns how many
	// tasks were rescued and how many failed that way.
	RescueExpired(ctx context.Context, now time.Time, maxRescues int) (rescued, failed int, err error)

	// CancelRun cancels an unfinished run: pending tasks become canceled at
	// once, running tasks when their worker reports (ExtendLeases returns
	// LeaseCanceled meanwhile). It reports whether the run was unfinished.
	// ErrRunNotFound if there is no such run.
	CancelRun(ctx context.Context, runID, reason string, now time.Time) (bool, error)

	// GetRun returns a snapshot of a run. ErrRunNotFound if there is none.
	GetRun(ctx context.Context, runID string) (*Run, error)

	// FindRun returns the run of workflow started by eventID.
	// ErrRunNotFound if there is none.
	FindRun(ctx context.Context, workflow, eventID string) (*Run, error)

	// ListRuns returns runs, newest first.
	ListRuns(ctx context.Context, f RunFilter) ([]*Run, error)

	// Prune deletes finished runs by p and returns how many it deleted.
	// Unfinished runs are never pruned. A pruned run's dedupe key is gone
	// with it: the dedupe retention is the run retention.
	Prune(ctx context.Context, p PrunePolicy) (int, error)

	// LastTick returns the last tick recorded for a schedule (zero if none).
	LastTick(ctx context.Context, schedule string) (time.Time, error)

	// RecordTick stores tick as the schedule's last tick if it is later
	// than the stored one, and reports whether it did.
	RecordTick(ctx context.Context, schedule string, tick time.Time) (bool, error)

	// CreateRuns records many runs in one round trip (one transaction for
	// a durable store), each as CreateRun would, and returns one result
	// per run, in order. An error means nothing was recorded. MaxActive
	// is checked once, for the whole batch, against the unfinished runs
	// before it (so a batch may go past it).
	CreateRuns(ctx context.Context, runs []NewRun) ([]CreateResult, error)

	// NextDue returns the earliest time after now at which a pending task
	// of the given workflows (of a run not paused) may become claimable
	// because its start time, retry, snooze or deferral comes due; zero if
	// none is known. The orchestrator calls it when idle to sleep until
	// then, so a run delayed by another process (or before a restart)
	// starts on time.
	NextDue(ctx context.Context, workflows []string, now time.Time) (time.Time, error)

	// SetPaused pauses (paused=true) or resumes a workflow, durably, for
	// every process sharing the store: while it is paused ClaimTasks
	// returns no task of it (running tasks finish; new runs are accepted
	// and wait). It reports whether the state changed. Resuming signals
	// workers (WorkNotifier).
	SetPaused(ctx context.Context, workflow string, paused bool) (changed bool, err error)

	// PausedWorkflows lists the paused workflows, sorted.
	PausedWorkflows(ctx context.Context) ([]string, error)

	// ReserveRate reserves the next start slot of spec.Key under the rate
	// spec (see RateSpec) and returns when it is: at or before now means
	// "start now"; later means the caller defers the task to that time
	// (OutcomeDefer with RateReserved). Reservations are atomic across
	// every process sharing the store, so concurrent callers get distinct
	// slots. State for a key idle longer than Per may be forgotten. An
	// invalid spec (Limit < 1, Per <= 0, Burst < 1) is refused with an
	// error and reserves nothing.
	ReserveRate(ctx context.Context, spec RateSpec, now time.Time) (time.Time, error)

	// SendSignal sends a signal to a run (see SignalSend for the rules):
	// it completes at once a task of the run that waits for it, or keeps
	// it buffered for a task that will. ErrRunNotFound if there is no such
	// run; ErrNoWaiter if the run finished or has no unfinished task whose
	// TaskSpec.Signal is s.Name; ErrSignalBufferFull if the run already
	// holds s.MaxBuffered unconsumed signals.
	SendSignal(ctx context.Context, s SignalSend) (SignalResult, error)

	// RetryRun reopens a finished run that failed or was canceled (see
	// RetryParams). ErrRunNotFound if there is no such run;
	// ErrNotRetryable if it is unfinished or succeeded (with p.From empty),
	// p.From names no task of it, or (p.From empty) no task of it is
	// failed, canceled or upstream_failed. The run keeps its ID, its event, the
	// outputs of the tasks not reset, and every attempt record.
	RetryRun(ctx context.Context, runID string, p RetryParams) (RetryResult, error)

	// WorkflowStats summarises runs per workflow, for dashboards: the runs
	// finished in [since, now) and the unfinished runs now. Workflows with
	// nothing to report are left out; the result is sorted by workflow. A
	// durable store answers from indexes (finished_at, state), without
	// scanning every run it holds.
	WorkflowStats(ctx context.Context, since, now time.Time) ([]WorkflowStats, error)
}

// A WorkNotifier is a Store that can tell idle workers that work may have
// appeared (a run created or a task made ready, possibly by another
// process; PostgreSQL does it with LISTEN/NOTIFY). The orchestrator then
// polls less. A lost signal may only cost latency: workers still poll.
type WorkNotifier interface {
	Store
	// WorkAvailable returns a channel that receives a value (non-blocking,
	// buffered 1) whenever new work may be ready: a run was created, a task
	// was rescued, or (for stores shared by several processes) another
	// process made tasks ready. Tasks made ready by CompleteTasks need no
	// signal to the process that completed: it learns of them from
	// CompleteResult.Ready.
	WorkAvailable() <-chan struct{}
}

// A ClaimingCompleter is a durable Store that can claim tasks in the
// transaction that records completions (PostgreSQL does). The executor's
// workers then pay one round trip and one commit per task boundary, not a
// completion and then a claim, and call the store themselves rather than
// through a batching goroutine (the store combines concurrent calls).
type ClaimingCompleter interface {
	Store
	// CompleteTasksAndClaim records cs exactly as CompleteTasks does and,
	// in the same transaction, claims up to p.Limit tasks as ClaimTasks(p)
	// would (p.Limit <= 0: none), after the completions, so a task they
	// made ready can be among them. A per-item error in the results does
	// not prevent the claim; an error return means nothing was claimed.
	// It may claim fewer than ClaimTasks would have found (when the store
	// had to record some completions apart, say): a caller that needs more
	// claims apart.
	CompleteTasksAndClaim(ctx context.Context, cs []Completion, p ClaimParams) ([]CompleteResult, []Claim, error)
}

// A CreatingClaimer is a durable Store that can claim tasks in the
// transaction that records new runs (PostgreSQL does). When workers of
// the submitting process are free, Submit and the cron trigger then start
// the new runs' first tasks without a claim round trip of their own and
// without waking the dispatcher.
type CreatingClaimer interface {
	Store
	// CreateRunsAndClaim records runs exactly as CreateRuns does and, in
	// the same transaction, claims up to p.Limit tasks as ClaimTasks(p)
	// would (p.Limit <= 0: none), after the insert, so the new runs' root
	// tasks can be among them. An error means nothing was recorded or
	// claimed. It may claim fewer than ClaimTasks would have found (none
	// for runs the store records apart, say).
	CreateRunsAndClaim(ctx context.Context, runs []NewRun, p ClaimParams) ([]CreateResult, []Claim, error)
}

// A RunWatcher is a Store that publishes the end of runs: its own
// completions and cancellations at once and, for a store shared by several
// processes, those of the other processes (PostgreSQL does it with
// LISTEN/NOTIFY). Orchestrator.Wait, and a cron trigger following its
// previous run, then wait without a polling loop; they still poll, rarely,
// in case a publication was lost.
type RunWatcher interface {
	Store
	// WatchRun returns a channel that is closed once the run is known to
	// have finished (at once if it finished recently), and stop, which
	// releases the watch; call it when done waiting. ok is false when the
	// store cannot see every run's end right now (its listener is down,
	// say): finished is then nil and the caller polls.
	WatchRun(runID string) (finished <-chan struct{}, stop func(), ok bool)
}
