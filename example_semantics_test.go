package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
)

// A panic in a task is a failed attempt, retried like any other; its error
// (a *PanicError in the hooks, its text in the run) carries the panic value
// and the stack.
func ExamplePanicError() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "parse", Tasks: []batuta.Task{{
		Name:  "parse",
		Retry: batuta.RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond},
		Run: func(context.Context, *batuta.Input) (any, error) {
			var m map[string]int
			m["x"]++ //nolint:staticcheck // SA5000: the panic this example shows
			return nil, nil
		},
	}}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	id, _ := o.Submit(ctx, "parse", batuta.Event{})
	run, _ := o.Wait(ctx, id)
	t := run.Task("parse")
	fmt.Println(run.State, len(t.Attempts), "attempts")
	fmt.Println(strings.Contains(t.Error, "assignment to entry in nil map"), strings.Contains(t.Error, "goroutine"))
	// Output:
	// failed 2 attempts
	// true true
}

// The idempotency key of a task is the same on every attempt, so an API
// that deduplicates by key (payments, email) does the work once however
// often the task is retried or re-run after a crash.
func ExampleInput_IdempotencyKey() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	var keys []string
	_ = o.Register(&batuta.Workflow{Name: "pay", Tasks: []batuta.Task{{
		Name:  "charge",
		Retry: batuta.RetryPolicy{InitialDelay: time.Millisecond},
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			keys = append(keys, strings.Replace(in.IdempotencyKey(), in.RunID(), "<run>", 1)) // one attempt at a time
			if in.Attempt() < 3 {
				return nil, errors.New("gateway timeout")
			}
			return nil, nil
		},
	}}})
	stop := runInBackground(o)
	ctx := context.Background()
	id, _ := o.Submit(ctx, "pay", batuta.Event{ID: "order-7"})
	_, _ = o.Wait(ctx, id)
	stop()
	fmt.Println(keys)
	// Output: [<run>/charge <run>/charge <run>/charge]
}

// Workflow.Timeout bounds a whole run from its creation: when it passes, the
// running task fails without retry, and the tasks after it never run.
func ExampleWorkflow_timeout() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "export", Timeout: 50 * time.Millisecond, Tasks: []batuta.Task{
		{Name: "dump", Retry: batuta.RetryPolicy{MaxAttempts: 5}, Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
			<-ctx.Done() // far slower than the workflow allows
			return nil, ctx.Err()
		}},
		{Name: "upload", Deps: []string{"dump"}, Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil }},
	}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	id, _ := o.Submit(ctx, "export", batuta.Event{})
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.State)
	for _, t := range run.Tasks {
		fmt.Println(t.Name, t.State, len(t.Attempts))
	}
	// Output:
	// failed
	// dump failed 1
	// upload upstream_failed 0
}

// Payloads are bounded: event data over Config.MaxPayloadBytes is refused
// at Submit, before anything is stored.
func ExamplePayloadTooLargeError() {
	o, _ := batuta.New(batuta.Config{Logger: quiet, MaxPayloadBytes: 1024})
	_ = o.Register(&batuta.Workflow{Name: "upload", Tasks: []batuta.Task{{
		Name: "store", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil },
	}}})
	_, err := o.Submit(context.Background(), "upload", batuta.Event{Data: make([]byte, 4096)})
	var tooLarge *batuta.PayloadTooLargeError
	fmt.Println(errors.Is(err, batuta.ErrPayloadTooLarge), errors.As(err, &tooLarge))
	fmt.Println(tooLarge.Size, tooLarge.Limit)
	// Output:
	// true true
	// 4096 1024
}
