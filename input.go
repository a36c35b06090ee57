package batuta

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
)

// Input is what a running task sees of its run: the triggering event, the
// outputs of its ancestors and its own identity. It is valid only during
// the TaskFunc call that received it and must not be retained.
type Input struct {
	claim *Claim
	task  *compiledTask
	// For reading ancestors that are not direct dependencies: the
	// attempt's ctx, the store, and the run, read once on first need.
	ctx   context.Context
	store Store
	mu    sync.Mutex
	run   *Run
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
// order of Task.Deps. Output reads further ancestors too.
func (in *Input) Upstream() []UpstreamResult { return in.claim.Upstream }

// Errors of Output.
var (
	// ErrNoOutput: Output named an ancestor that has no output to read:
	// it was skipped, upstream_failed, failed or canceled (or, for a
	// FireEarly task, has not finished yet). Read the ancestor's state with
	// Upstream, or give the task a join rule that fits.
	ErrNoOutput = errors.New("batuta: no output")
	// ErrNotAncestor: Output named a task that is not an ancestor of the
	// running task (nor in its workflow, perhaps); the message lists the
	// tasks it can read. Add the task to Task.Deps (directly or further up).
	ErrNotAncestor = errors.New("batuta: not an ancestor")
)

// EventData decodes the event's Data as JSON into a T.
//
// By default it is lenient, as encoding/json is: an empty payload decodes
// to T's zero value, and fields T does not have are ignored, so producers
// may add fields without breaking this consumer. In a workflow with
// StrictInput set it is strict, as EventDataStrict.
//
// Malformed data is an error matching ErrInvalidPayload, wrapped with
// Permanent: retrying cannot fix it, so the task fails at once when it
// returns the error.
func EventData[T any](in *Input) (T, error) {
	return eventData[T](in, in.task != nil && in.task.strict)
}

// EventDataStrict is EventData that refuses what lenient decoding lets
// through as a zero value: a field T does not have (when T is a struct), a
// top-level null, no data at all, and anything after the JSON value. The
// error matches ErrInvalidPayload and is permanent.
func EventDataStrict[T any](in *Input) (T, error) { return eventData[T](in, true) }

func eventData[T any](in *Input, strict bool) (T, error) {
	var v T
	if err := decodeJSON(in.claim.Event.Data, &v, strict); err != nil {
		var zero T
		return zero, Permanent(fmt.Errorf("%w: event data of run %s: %w", ErrInvalidPayload, in.claim.RunID, err))
	}
	return v, nil
}

// decodeJSON decodes data into v: leniently as json.Unmarshal (with empty
// data leaving v alone), or strictly.
func decodeJSON(data []byte, v any, strict bool) error {
	if !strict {
		if len(data) == 0 {
			return nil
		}
		return json.Unmarshal(data, v)
	}
	switch t := bytes.TrimSpace(data); {
	case len(t) == 0:
		return errors.New("no data: strict decoding needs a JSON value")
	case string(t) == "null":
		return errors.New("null: strict decoding needs a value, not null")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}

// Output returns the output of task, an ancestor of the running task (a
// dependency, a dependency of a dependency, and so on), as a T. With the
// in-memory store it is the value the task returned; with a durable store
// it is decoded from JSON.
//
// Errors: ErrNotAncestor when task is not an ancestor (the message lists
// those it can read); ErrNoOutput when the ancestor did not succeed
// (skipped, upstream_failed, ...); ErrTypeMismatch when it holds a value of
// another type. Direct dependencies come with the claim; a further ancestor
// is read from the in-memory store directly, and from a durable store with
// one read of the run per attempt, on the first such call (a Store error
// is returned wrapped, not permanent: it may be transient).
func Output[T any](in *Input, task string) (T, error) {
	var zero T
	for i := range in.claim.Upstream {
		u := &in.claim.Upstream[i]
		if u.Name != task {
			continue
		}
		if u.State != TaskSucceeded {
			return zero, noOutput(task, u.State, u.Error)
		}
		return convertOutput[T](u.Output, task)
	}
	u, err := in.ancestor(task)
	if err != nil {
		return zero, err
	}
	if u.State != TaskSucceeded {
		return zero, noOutput(task, u.State, u.Error)
	}
	return convertOutput[T](u.Output, task)
}

func noOutput(task string, st TaskState, why string) error {
	if why != "" {
		return fmt.Errorf("%w: output of %q: task %s (%s), not succeeded", ErrNoOutput, task, st, why)
	}
	return fmt.Errorf("%w: output of %q: task %s, not succeeded", ErrNoOutput, task, st)
}

// ancestor returns the state of task, an ancestor of the running task that
// is not a direct dependency: from the store's cheap per-task read if it
// has one, else from the run, read once per attempt.
func (in *Input) ancestor(task string) (UpstreamResult, error) {
	if in.task == nil || in.task.wf == nil {
		return UpstreamResult{}, fmt.Errorf("%w: output of %q: task %q has no ancestors", ErrNotAncestor, task, in.claim.Task)
	}
	pos, ok := in.task.wf.index[task]
	if !ok || !in.task.isAncestor(pos) {
		return UpstreamResult{}, notAncestor(in, task, in.task.ancestorNames())
	}
	if in.store == nil {
		return UpstreamResult{}, fmt.Errorf("batuta: output of %q: no store to read it from", task)
	}
	ctx := in.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	if r, ok := in.store.(taskResultReader); ok {
		u, err := r.taskResult(ctx, in.claim.RunID, pos, task)
		if err != nil {
			return UpstreamResult{}, fmt.Errorf("batuta: output of %q: %w", task, err)
		}
		return u, nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.run == nil {
		r, err := in.store.GetRun(ctx, in.claim.RunID)
		if err != nil {
			return UpstreamResult{}, fmt.Errorf("batuta: output of %q: reading run %s: %w", task, in.claim.RunID, err)
		}
		in.run = r
	}
	tr := in.run.Task(task)
	if tr == nil {
		return UpstreamResult{}, fmt.Errorf("batuta: output of %q: run %s has no such task", task, in.claim.RunID)
	}
	return UpstreamResult{Name: tr.Name, State: tr.State, Output: tr.Output, Error: tr.Error}, nil
}

func notAncestor(in *Input, task string, names []string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "output of %q: ", task)
	if _, ok := in.task.wf.index[task]; ok {
		fmt.Fprintf(&b, "task %q is not an ancestor of task %q", task, in.claim.Task)
	} else {
		fmt.Fprintf(&b, "workflow %q has no task %q", in.claim.Workflow, task)
	}
	if len(names) == 0 {
		fmt.Fprintf(&b, "; task %q has no dependencies, so it can read no output", in.claim.Task)
	} else {
		fmt.Fprintf(&b, "; task %q can read %s", in.claim.Task, quoteList(names, 20))
	}
	if _, ok := in.task.wf.index[task]; ok && task != in.claim.Task {
		fmt.Fprintf(&b, "; to read %q, add it to Task.Deps of %q (or of one of its ancestors)", task, in.claim.Task)
	}
	return fmt.Errorf("%w: %s", ErrNotAncestor, b.String())
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
			return zero, fmt.Errorf("%w: output of %q is not a %T: %w", ErrTypeMismatch, what, zero, err)
		}
		return t, nil
	}
	return zero, fmt.Errorf("%w: output of %q is a %T, not a %T", ErrTypeMismatch, what, v, zero)
}

// OutputAs converts a task output taken from a Run snapshot (TaskRun.Output)
// to a T, whichever store produced it.
func OutputAs[T any](v any) (T, error) { return convertOutput[T](v, "run") }
