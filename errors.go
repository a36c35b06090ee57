package batuta

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Adapters return these (wrapped with %w) so callers can
// branch with errors.Is whatever the backend.
var (
	// ErrBusy: the orchestrator is at its in-flight cap; try again later.
	// A trigger that gets it from fire keeps the event at its source.
	ErrBusy = errors.New("batuta: busy")
	// ErrUnknownWorkflow: no workflow or function is registered under the name.
	ErrUnknownWorkflow = errors.New("batuta: unknown workflow")
	// ErrInvalidWorkflow: a workflow failed validation at Register.
	ErrInvalidWorkflow = errors.New("batuta: invalid workflow")
	// ErrRunNotFound: no run has the given ID (or it was pruned).
	ErrRunNotFound = errors.New("batuta: run not found")
	// ErrLeaseLost: a write about a claimed task was fenced off because the
	// claim's lease expired and the task was rescued or finished by another
	// worker.
	ErrLeaseLost = errors.New("batuta: lease lost")
	// ErrPayloadTooLarge: event data or a task output exceeds the size cap.
	// The concrete error is a *PayloadTooLargeError.
	ErrPayloadTooLarge = errors.New("batuta: payload too large")
	// ErrInvalidPayload: a payload is malformed (not the JSON the accessor
	// expects, invalid UTF-8 where text is required, ...).
	ErrInvalidPayload = errors.New("batuta: invalid payload")
	// ErrClosed: the component was closed or its Run has returned.
	ErrClosed = errors.New("batuta: closed")
	// ErrTimeout: a task attempt or a run exceeded its timeout.
	ErrTimeout = errors.New("batuta: timeout")
	// ErrCanceled: the run was canceled.
	ErrCanceled = errors.New("batuta: canceled")
	// ErrTypeMismatch: a typed accessor found a value of another type.
	ErrTypeMismatch = errors.New("batuta: type mismatch")
	// ErrInvalidConfig: a Config field has an invalid value.
	ErrInvalidConfig = errors.New("batuta: invalid config")
	// ErrQueueNotFound: a queue, stream or topic the adapter was told to
	// use does not exist (and the adapter was told not to create it).
	ErrQueueNotFound = errors.New("batuta: queue not found")
	// ErrInvalidIdentifier: a table, schema, column, channel, queue or stream
	// name was refused as unsafe.
	ErrInvalidIdentifier = errors.New("batuta: invalid identifier")
	// ErrNoWaiter: a signal no task of the run waits or will wait for (the
	// run finished, or has no unfinished task waiting for that name), or a
	// correlated signal that matched no run.
	ErrNoWaiter = errors.New("batuta: no task waits for this signal")
	// ErrSignalBufferFull: a signal to a run that already holds its
	// maximum of unconsumed signals.
	ErrSignalBufferFull = errors.New("batuta: signal buffer full")
	// ErrNotRetryable: Retry of a run that is unfinished or succeeded, or
	// from a task the run does not have.
	ErrNotRetryable = errors.New("batuta: run cannot be retried")
)

// PayloadTooLargeError reports a payload over its size cap.
type PayloadTooLargeError struct {
	What  string // "event data", "output of task charge", ...
	Size  int
	Limit int
}

func (e *PayloadTooLargeError) Error() string {
	return fmt.Sprintf("batuta: %s is %d bytes, over the limit of %d", e.What, e.Size, e.Limit)
}

// Is makes errors.Is(err, ErrPayloadTooLarge) true.
func (e *PayloadTooLargeError) Is(target error) bool { return target == ErrPayloadTooLarge }

// ConfigError names a configuration field with an invalid value.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("batuta: invalid config: %s: %s", e.Field, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// Errors a task returns to steer its retries.

// permanentError wraps an error that must not be retried.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent wraps err so the task is not retried: the attempt fails the
// task at once, whatever attempts remain. Permanent(nil) returns nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err (or an error it wraps) was made by Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// SnoozeError asks for the task to run again after Delay without spending
// an attempt. Return it with Snooze.
type SnoozeError struct{ Delay time.Duration }

func (e *SnoozeError) Error() string { return fmt.Sprintf("batuta: snoozed for %s", e.Delay) }

// Snooze returns an error that reschedules the task d from now without
// spending an attempt (to wait for an external condition, say). A task
// that snoozes forever never finishes: bound it with a run timeout.
func Snooze(d time.Duration) error {
	if d < 0 {
		d = 0
	}
	return &SnoozeError{Delay: d}
}
