package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
)

func Example() {
	o, _ := batuta.New(batuta.Config{Logger: slog.New(slog.DiscardHandler)})
	_ = o.Register(&batuta.Workflow{
		Name: "greet",
		Tasks: []batuta.Task{
			{Name: "name", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				p, err := batuta.EventData[struct{ Name string }](in)
				return p.Name, err
			}},
			{Name: "hello", Deps: []string{"name"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				name, err := batuta.Output[string](in, "name")
				return "hello, " + name, err
			}},
		},
	})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()

	id, _ := o.Submit(ctx, "greet", batuta.Event{ID: "evt-1", Data: []byte(`{"Name":"Ada"}`)})
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.State, run.Task("hello").Output)

	stop()
	<-done
	// Output: succeeded hello, Ada
}

func ExampleOrchestrator_Submit_idempotent() {
	o, _ := batuta.New(batuta.Config{Logger: slog.New(slog.DiscardHandler)})
	_ = o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil }}}})
	ctx := context.Background()
	first, _ := o.Submit(ctx, "w", batuta.Event{ID: "order-42"})
	second, _ := o.Submit(ctx, "w", batuta.Event{ID: "order-42"})
	fmt.Println(first == second)
	// Output: true
}

func ExampleJoinRule() {
	o, _ := batuta.New(batuta.Config{Logger: slog.New(slog.DiscardHandler)})
	_ = o.Register(&batuta.Workflow{Name: "pay", Tasks: []batuta.Task{
		{Name: "charge", Retry: batuta.RetryPolicy{MaxAttempts: 1}, Run: func(context.Context, *batuta.Input) (any, error) {
			return nil, errors.New("card declined")
		}},
		{Name: "ship", Deps: []string{"charge"}, Run: func(context.Context, *batuta.Input) (any, error) { return "shipped", nil }},
		{Name: "alert", Deps: []string{"charge"}, When: batuta.OneFailed, Run: func(context.Context, *batuta.Input) (any, error) {
			return "paged on-call", nil
		}},
	}})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	id, _ := o.Submit(ctx, "pay", batuta.Event{})
	run, _ := o.Wait(ctx, id)
	for _, t := range run.Tasks {
		fmt.Println(t.Name, t.State)
	}
	stop()
	<-done
	// Output:
	// charge failed
	// ship upstream_failed
	// alert succeeded
}

func ExampleRetryPolicy() {
	p := batuta.RetryPolicy{MaxAttempts: 5, InitialDelay: time.Second, Multiplier: 2, MaxDelay: 10 * time.Second, NoJitter: true}
	for n := 1; n < p.MaxAttempts; n++ {
		fmt.Println(p.Backoff(n))
	}
	// Output:
	// 1s
	// 2s
	// 4s
	// 8s
}

// A task reads the output of any of its ancestors, not only of its direct
// dependencies: "email" reads "validate", two levels up. A name that is not
// an ancestor is an error listing those the task can read.
func ExampleOutput_ancestor() {
	type order struct {
		ID    int    `json:"id"`
		Email string `json:"email"`
	}
	o, _ := batuta.New(batuta.Config{Logger: slog.New(slog.DiscardHandler)})
	_ = o.Register(&batuta.Workflow{Name: "signup", Tasks: []batuta.Task{
		{Name: "validate", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			return batuta.EventData[order](in)
		}},
		{Name: "charge", Deps: []string{"validate"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			return "receipt-1", nil
		}},
		{Name: "audit", Deps: []string{"validate"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			return nil, nil
		}},
		{Name: "email", Deps: []string{"charge"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			ord, err := batuta.Output[order](in, "validate") // a grand-ancestor
			if err != nil {
				return nil, err
			}
			receipt, err := batuta.Output[string](in, "charge") // a direct dependency
			if err != nil {
				return nil, err
			}
			_, err = batuta.Output[any](in, "audit") // a sibling branch: not an ancestor
			fmt.Println(errors.Is(err, batuta.ErrNotAncestor))
			fmt.Println(err)
			return fmt.Sprintf("mail %s to %s", receipt, ord.Email), nil
		}},
	}})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	id, _ := o.Submit(ctx, "signup", batuta.Event{Data: []byte(`{"id":1,"email":"ada@example.com"}`)})
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.Task("email").Output)
	stop()
	<-done
	// Output:
	// true
	// batuta: not an ancestor: output of "audit": task "audit" is not an ancestor of task "email"; task "email" can read "validate", "charge"; to read "audit", add it to Task.Deps of "email" (or of one of its ancestors)
	// mail receipt-1 to ada@example.com
}

// EventData is lenient by default, like encoding/json: a misspelt field is
// ignored and the struct keeps its zero value. EventDataStrict (or
// Workflow.StrictInput) refuses unknown fields, null and empty data, with a
// permanent error matching ErrInvalidPayload, so the task is not retried.
func ExampleEventDataStrict() {
	type signup struct {
		Email string `json:"email"`
	}
	o, _ := batuta.New(batuta.Config{Logger: slog.New(slog.DiscardHandler)})
	_ = o.Register(&batuta.Workflow{Name: "signup", Tasks: []batuta.Task{{
		Name: "welcome",
		Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			lenient, _ := batuta.EventData[signup](in)
			fmt.Printf("lenient: %+v\n", lenient)
			_, err := batuta.EventDataStrict[signup](in)
			fmt.Println("strict:", strings.ReplaceAll(err.Error(), in.RunID(), "<run>"))
			fmt.Println(errors.Is(err, batuta.ErrInvalidPayload), batuta.IsPermanent(err))
			return nil, err
		},
	}}})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	id, _ := o.Submit(ctx, "signup", batuta.Event{ID: "evt-1", Data: []byte(`{"emial":"ada@example.com"}`)})
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.State, len(run.Tasks[0].Attempts), "attempt")
	stop()
	<-done
	// Output:
	// lenient: {Email:}
	// strict: batuta: invalid payload: event data of run <run>: json: unknown field "emial"
	// true true
	// failed 1 attempt
}
