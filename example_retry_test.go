package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
)

// Permanent fails the task at once, whatever attempts remain: for errors a
// retry cannot fix (a declined card, a malformed order).
func ExamplePermanent() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "pay", Tasks: []batuta.Task{{
		Name:  "charge",
		Retry: batuta.RetryPolicy{MaxAttempts: 5},
		Run: func(context.Context, *batuta.Input) (any, error) {
			return nil, batuta.Permanent(errors.New("card declined"))
		},
	}}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	id, _ := o.Submit(ctx, "pay", batuta.Event{ID: "order-7"})
	run, _ := o.Wait(ctx, id)
	charge := run.Task("charge")
	fmt.Println(run.State, charge.State, len(charge.Attempts), "attempt:", charge.Error)
	// Output: failed failed 1 attempt: card declined
}

// Snooze runs the task again later without spending an attempt: to wait
// for something outside (a file to appear, a payment to settle). Bound it
// with a Workflow.Timeout so that a task cannot snooze forever.
func ExampleSnooze() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	checks := 0
	_ = o.Register(&batuta.Workflow{Name: "settle", Timeout: time.Hour, Tasks: []batuta.Task{{
		Name:  "await-settlement",
		Retry: batuta.RetryPolicy{MaxAttempts: 1}, // snoozes do not count
		Run: func(context.Context, *batuta.Input) (any, error) {
			checks++ // one task runs one attempt at a time
			if checks < 3 {
				return nil, batuta.Snooze(time.Millisecond) // not settled yet
			}
			return "settled", nil
		},
	}}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	id, _ := o.Submit(ctx, "settle", batuta.Event{ID: "payment-9"})
	run, _ := o.Wait(ctx, id)
	// Snoozes in a row are one record, which counts them.
	for _, a := range run.Task("await-settlement").Attempts {
		fmt.Println("attempt", a.Number, a.Outcome, a.Snoozes)
	}
	fmt.Println(run.State, run.Task("await-settlement").Output)
	// Output:
	// attempt 1 snooze 2
	// attempt 1 succeeded 0
	// succeeded settled
}

// Task.Timeout bounds each attempt: the attempt's ctx ends, the attempt is
// recorded as timed_out and retried like any other failure. A body that
// ignores its ctx is abandoned at the deadline, and the worker moves on.
func ExampleTask_timeout() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "lookup", Tasks: []batuta.Task{{
		Name:    "call-partner",
		Timeout: 20 * time.Millisecond,
		Retry:   batuta.RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond},
		Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
			<-ctx.Done() // the partner never answers
			return nil, ctx.Err()
		},
	}}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	id, _ := o.Submit(ctx, "lookup", batuta.Event{ID: "lookup-1"})
	run, _ := o.Wait(ctx, id)
	for _, a := range run.Task("call-partner").Attempts {
		fmt.Println("attempt", a.Number, a.Outcome)
	}
	fmt.Println(run.State)
	// Output:
	// attempt 1 timed_out
	// attempt 2 timed_out
	// failed
}
