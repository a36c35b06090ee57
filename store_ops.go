package batuta

import "time"

// This file holds the Store contract's types for durable waits (signals,
// child runs) and for operations (retry, statistics). The methods are in
// the Store interface (store.go); batutatest holds every store to them.

// A RunLink names a task of a run: the parent of a child run.
type RunLink struct {
	RunID string `json:"run_id"`
	Task  string `json:"task"`
}

// A SignalRecord is a signal buffered for a run, as a Claim carries it.
type SignalRecord struct {
	// Seq identifies the signal within the store (Completion.ConsumeSignal).
	// Signals of one run are numbered in the order they were sent.
	Seq  int64
	Name string
	// Data is the signal's payload: the Go value with the in-memory store,
	// a json.RawMessage with durable stores (as Output).
	Data   any
	SentAt time.Time
}

// SignalSend is a signal as Store.SendSignal receives it.
//
// The rules, applied atomically:
//   - If the run has a task whose TaskSpec.Signal is Name, that is pending
//     and waits (it was handed back with OutcomeWait, so WaitingSince is
//     set), the first such task in declaration order is completed at once
//     as succeeded, with Output Data, recording no attempt (WaitingFor and
//     WaitingSince are kept); its dependents are counted down as
//     CompleteTasks does, and the run may finish. The signal is not
//     buffered. SignalResult.Delivered tells so.
//   - Otherwise, if the run is unfinished and has an unfinished task whose
//     TaskSpec.Signal is Name (it has not reached its wait yet, or is
//     claimed right now), the signal is buffered, unless the run already
//     holds MaxBuffered unconsumed signals (ErrSignalBufferFull). A task
//     pending after OutcomeWait with that signal name is made due at once
//     (the claim picks the signal up).
//   - Otherwise ErrNoWaiter (a finished run, or no such task).
type SignalSend struct {
	RunID string
	Name  string
	// Data as Completion.Output: the Go value for a non-durable store, a
	// json.RawMessage for a durable one.
	Data   any
	SentAt time.Time
	// MaxBuffered bounds the unconsumed signals a run holds (<= 0: 100).
	MaxBuffered int
	// Claim, if not nil, asks the store to claim up to Claim.Limit tasks
	// as ClaimTasks would, in the transaction that delivers the signal
	// (after it, so a task the delivery made ready can be among them),
	// and return them in SignalResult.Claims. A store may claim nothing
	// (the in-memory and SQLite stores do not); the orchestrator sets it
	// only for a free worker of its own, which takes what comes back.
	Claim *ClaimParams
}

// SignalResult is the Store's answer to SendSignal.
type SignalResult struct {
	// Delivered: a waiting task was completed with the signal. Otherwise
	// the signal was buffered.
	Delivered bool
	// Task is the task the signal completed (Delivered) or is buffered for.
	Task string
	// Ready is how many tasks became ready through the delivery.
	Ready int
	// RunFinished is set when the delivery finished the run: its state.
	RunFinished RunState
	// Claims are the tasks claimed for SignalSend.Claim (none without it,
	// and none when nothing was delivered).
	Claims []Claim
}

// RetryParams says how Store.RetryRun reopens a run.
//
// The tasks reset are the run's failed, canceled and upstream_failed tasks
// or, with From, the task named From (whatever its state), together with
// every task downstream of them (whatever their state: a OneFailed
// compensation that ran because of the failure is decided again). A reset
// task becomes pending with no output and no error, its spent attempts
// set to zero (a fresh retry budget: new attempt records are numbered from
// 1 again, after the old ones, which are all kept), its rescues, wait and
// signal state cleared, and its dependency count recomputed from its
// dependencies that are not finished (those reset); a task whose
// dependencies are all finished is due at once. Tasks not reset keep their
// state and output. The run becomes pending (started_at kept), its Error
// and FinishedAt cleared, Retries incremented, Deadline set to p.Deadline;
// it re-enters its concurrency group as a new run would (a ConcurrencyQueue
// run waits for room again). Workers are signalled (WorkNotifier).
//
// A run with nothing to reset (a canceled run whose tasks all succeeded:
// it was canceled while its last tasks ran, and they finished well) is
// refused with ErrNotRetryable, as it would otherwise stay pending with no
// task to run.
type RetryParams struct {
	// From, if not empty, resets that task and its downstream tasks, which
	// also allows retrying a succeeded run (DBOS's fork from a step).
	From string
	// Now is the orchestrator's clock.
	Now time.Time
	// Deadline is the reopened run's workflow deadline (zero: none).
	Deadline time.Time
}

// RetryResult is the Store's answer to RetryRun.
type RetryResult struct {
	// Reset lists the reset tasks, in declaration order.
	Reset []string
}

// WorkflowStats summarises one workflow's runs (Store.WorkflowStats).
type WorkflowStats struct {
	Workflow string `json:"workflow"`
	// Runs finished in the window, by final state.
	Succeeded int `json:"succeeded"`
	Failed    int `json:"failed"`
	Canceled  int `json:"canceled"`
	// DurationP50 and DurationP95 are percentiles of FinishedAt-CreatedAt
	// over the runs finished in the window (zero if none).
	DurationP50 time.Duration `json:"duration_p50"`
	DurationP95 time.Duration `json:"duration_p95"`
	// Unfinished runs now: Running (a task claimed or finished), Pending
	// (none yet, due now) and Waiting (pending with a start time after now,
	// or running with every unfinished task waiting after an OutcomeWait;
	// a store may count the latter as Running).
	Running int `json:"running"`
	Pending int `json:"pending"`
	Waiting int `json:"waiting"`
	// OldestPending is the CreatedAt of the oldest pending run that is due
	// (zero if none): how far behind the workers are.
	OldestPending time.Time `json:"oldest_pending,omitzero"`
}
