package batuta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Workflow.OnFailure and Workflow.DeadLetter run in a hidden workflow, one
// per workflow that has them, registered with it: FailureWorkflow(name).
// Each failure of a run (its ID and Run.Retries) is one event of it, whose
// ID derives from both, so the store's deduplication by event ID makes the
// handling happen once per failure however many times it is submitted.
// It is submitted (1) by the process that records the run's end, right
// away, and (2) by a sweeper in every running orchestrator that has the
// workflow, which lists the recently failed runs and submits them all
// again: a crash between the end and the submission loses nothing.

// FailureTask is the task of a failure workflow (FailureWorkflow) that
// calls Workflow.OnFailure; the one handing to Workflow.DeadLetter is
// FunctionDeadLetterTask.
const FailureTask = "on-failure"

// failurePrefix starts the names of the hidden failure workflows.
const failurePrefix = "batuta.failed:"

// FailureWorkflow returns the name of the hidden workflow that runs the
// Workflow.OnFailure and Workflow.DeadLetter of the named workflow. Its
// runs are ordinary runs (ListRuns, Retry), with Event.Subject the failed
// run's ID and Event.Type FailureEventType.
func FailureWorkflow(workflow string) string { return failurePrefix + workflow }

// IsFailureWorkflow reports whether name is a hidden failure workflow's
// (FailureWorkflow), for listings that hide them.
func IsFailureWorkflow(name string) bool {
	return len(name) > len(failurePrefix) && name[:len(failurePrefix)] == failurePrefix
}

// FailureEventType is the Event.Type of a failure workflow's events.
const FailureEventType = "batuta.run.failed"

// failureRef is a failure workflow's event data.
type failureRef struct {
	RunID    string `json:"run_id"`
	Workflow string `json:"workflow"`
	Retries  int    `json:"retries"`
}

// failureEvent is the event of r's failure: its ID is the dedupe key.
func failureEvent(r *Run) Event {
	data, _ := json.Marshal(failureRef{RunID: r.ID, Workflow: r.Workflow, Retries: r.Retries}) // cannot fail
	return Event{
		ID:      "failed:" + r.ID + ":" + strconv.Itoa(r.Retries),
		Source:  "batuta",
		Type:    FailureEventType,
		Subject: r.ID,
		Time:    r.FinishedAt,
		Data:    data,
	}
}

// failureWorkflow returns the hidden workflow running wf's OnFailure and
// DeadLetter, nil if it has neither.
func (o *Orchestrator) failureWorkflow(wf *Workflow) *Workflow {
	if wf == nil || wf.OnFailure == nil && wf.DeadLetter == nil {
		return nil
	}
	fw := &Workflow{Name: FailureWorkflow(wf.Name)}
	if fn := wf.OnFailure; fn != nil {
		timeout := wf.OnFailureTimeout
		if timeout == 0 {
			timeout = time.Minute
		}
		retry := wf.OnFailureRetry
		if retry == (RetryPolicy{}) {
			retry = RetryPolicy{MaxAttempts: 10, InitialDelay: time.Second, MaxDelay: time.Minute}
		}
		fw.Tasks = append(fw.Tasks, Task{Name: FailureTask, Retry: retry, Timeout: timeout,
			Run: func(ctx context.Context, in *Input) (any, error) {
				r, err := o.failedRun(ctx, in)
				if err != nil {
					return nil, err
				}
				return nil, fn(ctx, r)
			}})
	}
	if dl := wf.DeadLetter; dl != nil {
		fw.Tasks = append(fw.Tasks, deadLetterTaskOf(wf.DeadLetterRetry, func(ctx context.Context, in *Input) (any, error) {
			r, err := o.failedRun(ctx, in)
			if err != nil {
				return nil, err
			}
			attempts := 0
			for _, t := range r.Tasks {
				if t.State == TaskFailed {
					attempts = max(attempts, t.AttemptCount())
				}
			}
			return nil, handDeadLetter(ctx, dl, DeadLetter{
				Event: r.Event, Reason: DeadLetterFailed, Error: r.Error, Attempts: attempts,
				Workflow: r.Workflow, RunID: r.ID, Time: o.clock.Now(),
			})
		}))
	}
	return fw
}

// failedRun reads the snapshot of the failed run a failure workflow's
// event names (as it is now: a Retry since may have changed it).
func (o *Orchestrator) failedRun(ctx context.Context, in *Input) (*Run, error) {
	var ref failureRef
	if err := json.Unmarshal(in.Event().Data, &ref); err != nil || ref.RunID == "" {
		return nil, Permanent(fmt.Errorf("%w: %s: the event does not name a failed run", ErrInvalidPayload, in.Workflow()))
	}
	r, err := o.store.GetRun(ctx, ref.RunID)
	if errors.Is(err, ErrRunNotFound) {
		return nil, Permanent(fmt.Errorf("batuta: failed run %s: %w (pruned before its failure was handled?)", ref.RunID, err))
	}
	return r, err
}

// failed starts the failure handling of a run that just failed, if its
// workflow has any. An error is logged: the sweeper submits it again.
func (o *Orchestrator) failed(ctx context.Context, runID, workflow string) {
	o.mu.RLock()
	cw := o.workflows[workflow]
	o.mu.RUnlock()
	if cw == nil || cw.failures == "" {
		return
	}
	r, err := o.store.GetRun(ctx, runID)
	if err == nil && r.State != RunFailed {
		return // retried meanwhile: the sweeper sees its next failure
	}
	if err == nil {
		_, _, err = o.submit(ctx, cw.failures, failureEvent(r), nil)
	}
	if err != nil {
		o.log.Warn("batuta: starting the failure handling of a run failed; the failure sweeper will try again",
			"run", runID, "workflow", workflow, "error", err)
	}
}

// The failure sweeper's bounds: how often it runs, how old a run may be
// (since its creation, beyond its workflow's Timeout) and how long ago it
// may have failed to be swept, and how many failed runs per workflow one
// sweep looks at (newest first).
const (
	failureSweepEvery   = time.Minute
	failureSweepCreated = 24 * time.Hour
	failureSweepWindow  = time.Hour
	failureSweepMax     = 1000
)

// failureSweeper submits the failures of recently failed runs again, in
// case the process that recorded a run's end died before it submitted
// its failure (deduplication makes a second submission a no-op).
func (ex *executor) failureSweeper(ctx context.Context) {
	sweep := func() {
		if err := ex.o.sweepFailures(ctx); err != nil && ctx.Err() == nil {
			ex.o.log.Warn("batuta: failure sweep failed; retrying at the next one", "error", err)
		}
	}
	sweep()
	everyTick(ctx, failureSweepEvery, sweep)
}

// sweepFailures is one pass of the failure sweeper.
func (o *Orchestrator) sweepFailures(ctx context.Context) error {
	o.mu.RLock()
	var cws []*compiledWorkflow
	for _, cw := range o.workflows {
		if cw.failures != "" {
			cws = append(cws, cw)
		}
	}
	o.mu.RUnlock()
	if len(cws) == 0 {
		return nil
	}
	now := o.clock.Now()
	window := failureSweepWindow
	if o.cfg.Retention > 0 {
		// A failure handled and pruned must not be handled again.
		window = min(window, o.cfg.Retention/2)
	}
	var errs []error
	for _, cw := range cws {
		f := RunFilter{Workflow: cw.name, State: RunFailed, CreatedAfter: now.Add(-failureSweepCreated - cw.timeout), Limit: 100}
		for seen := 0; seen < failureSweepMax; {
			page, err := o.store.ListRuns(ctx, f)
			if err != nil {
				errs = append(errs, fmt.Errorf("listing failed runs of %s: %w", cw.name, err))
				break
			}
			var evs []Event
			for _, r := range page {
				if r.State == RunFailed && !r.FinishedAt.Before(now.Add(-window)) {
					evs = append(evs, failureEvent(r))
				}
			}
			if len(evs) > 0 {
				if _, err := o.SubmitMany(ctx, cw.failures, evs); err != nil {
					errs = append(errs, err)
					break
				}
			}
			seen += len(page)
			if len(page) < f.Limit || page[len(page)-1].ID == f.After {
				break
			}
			f.After = page[len(page)-1].ID
		}
	}
	return errors.Join(errs...)
}
