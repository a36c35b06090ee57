package batuta

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// Input is what a running task sees of its run: the triggering event, the
// outputs of its dependencies and its own identity. It is valid only during
// the TaskFunc call that received it and must not be retained.
type Input struct {
	claim *Claim
	task  *compiledTask
}

// Event returns the event that started the run.
func (in *Input) Event() Event { return in.claim.Event }

// RunID returns the ID of the run.
func (in *Input) RunID() string { return in.claim.RunID }

// Workflow returns the name of the workflow.
func (in *Input) Workflow() string { return in.claim.Workflow }

// Task returns the name of the running task.
func (in *Input) Task() string { return in.claim.Task }

// Attempt returns the number of this attempt, from 1.
func (in *Input) Attempt() int { return in.claim.Attempt }

// MaxAttempts returns the task's retry budget (RetryPolicy.MaxAttempts).
func (in *Input) MaxAttempts() int { return in.task.retry.MaxAttempts }

// LastAttempt reports whether a failure of this attempt fails the task
// for good.
func (in *Input) LastAttempt() bool { return in.claim.Attempt >= in.task.retry.MaxAttempts }

// Claim returns the lease that this attempt runs under. Stores that offer
// transactional completion (batutapg) take it to record the task's success
// in the same transaction as its side effect.
func (in *Input) Claim() ClaimRef { return in.claim.Ref() }

// IdempotencyKey returns a key that is the same for every attempt of this
// task in this run ("<run id>/<task>"): pass it to external APIs (payment
// providers, email services) so a retried or re-run attempt has its effect
// once.
func (in *Input) IdempotencyKey() string { return in.claim.RunID + "/" + in.claim.Task }

// AttemptKey returns a key unique to this attempt ("<run id>/<task>/<n>").
func (in *Input) AttemptKey() string {
	return in.IdempotencyKey() + "/" + strconv.Itoa(in.claim.Attempt)
}

// Upstream returns the results of the task's direct dependencies, in the
// order of Task.Deps.
func (in *Input) Upstream() []UpstreamResult { return in.claim.Upstream }

// EventData decodes the event's Data as JSON into a T. An empty payload
// decodes to T's zero value; malformed JSON is an error matching
// ErrInvalidPayload.
func EventData[T any](in *Input) (T, error) {
	var v T
	data := in.claim.Event.Data
	if len(data) == 0 {
		return v, nil
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return v, fmt.Errorf("%w: event data of run %s: %v", ErrInvalidPayload, in.claim.RunID, err)
	}
	return v, nil
}

// Output returns the output of the direct dependency named task as a T.
// With the in-memory store it is the value the task returned; with a
// durable store it is decoded from JSON. It is an error if task is not a
// dependency, did not succeed, or holds a value of another type
// (ErrTypeMismatch).
func Output[T any](in *Input, task string) (T, error) {
	var zero T
	for i := range in.claim.Upstream {
		u := &in.claim.Upstream[i]
		if u.Name != task {
			continue
		}
		if u.State != TaskSucceeded {
			return zero, fmt.Errorf("batuta: output of %q: task %s, not succeeded", task, u.State)
		}
		return convertOutput[T](u.Output, task)
	}
	return zero, fmt.Errorf("batuta: output of %q: not a dependency of task %q", task, in.claim.Task)
}

// convertOutput turns a stored output into a T: the value itself, or its
// JSON encoding decoded.
func convertOutput[T any](v any, what string) (T, error) {
	var zero T
	if t, ok := v.(T); ok {
		return t, nil
	}
	if v == nil {
		return zero, nil
	}
	if raw, ok := v.(json.RawMessage); ok {
		var t T
		if err := json.Unmarshal(raw, &t); err != nil {
			return zero, fmt.Errorf("%w: output of %q is not a %T: %v", ErrTypeMismatch, what, zero, err)
		}
		return t, nil
	}
	return zero, fmt.Errorf("%w: output of %q is a %T, not a %T", ErrTypeMismatch, what, v, zero)
}

// OutputAs converts a task output taken from a Run snapshot (TaskRun.Output)
// to a T, whichever store produced it.
func OutputAs[T any](v any) (T, error) { return convertOutput[T](v, "run") }
