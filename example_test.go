package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
