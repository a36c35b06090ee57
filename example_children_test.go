package batuta_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/batuta-dev/batuta"
)

// A Task.Child task runs another registered workflow as a child run, with
// an event built from its inputs, and finishes with the child's outcome:
// its output maps each of the child's tasks to its output (ChildOutput
// reads one). The parent task holds no worker while the child runs, and
// the child is started once, whatever retries or crashes happen.
func ExampleChildWorkflow() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "shipping", Tasks: []batuta.Task{
		{Name: "label", Run: func(_ context.Context, in *batuta.Input) (any, error) {
			order, err := batuta.EventData[string](in)
			return "label for " + order, err
		}},
	}})
	_ = o.Register(&batuta.Workflow{Name: "order", Tasks: []batuta.Task{
		{Name: "charge", Run: func(context.Context, *batuta.Input) (any, error) { return "order-42", nil }},
		{Name: "ship", Deps: []string{"charge"}, Child: &batuta.ChildWorkflow{
			Workflow: "shipping",
			Event: func(in *batuta.Input) (batuta.Event, error) {
				order, err := batuta.Output[string](in, "charge")
				return batuta.Event{Subject: order, Data: []byte(`"` + order + `"`)}, err
			},
		}},
		{Name: "email", Deps: []string{"ship"}, Run: func(_ context.Context, in *batuta.Input) (any, error) {
			return batuta.ChildOutput[string](in, "ship", "label")
		}},
	}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	id, _ := o.Submit(ctx, "order", batuta.Event{})
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.State, run.Task("email").Output)
	child, _ := o.GetRun(ctx, run.Task("ship").Child)
	fmt.Println(child.Workflow, child.State, "parent task:", child.Parent.Task)
	// Output:
	// succeeded label for order-42
	// shipping succeeded parent task: ship
}

// A Task.ForEach task runs its body once per item of a list computed at run
// time, at most MaxParallel at once, each item with its own retries; its
// output is the items' outputs in item order (ItemOutputs reads them).
func ExampleForEach() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "restock", Tasks: []batuta.Task{
		{Name: "lines", Run: func(context.Context, *batuta.Input) (any, error) {
			return []string{"apple", "pear", "plum"}, nil
		}},
		{Name: "reserve", Deps: []string{"lines"},
			ForEach: &batuta.ForEach{
				Items: func(in *batuta.Input) ([]any, error) {
					lines, err := batuta.Output[[]string](in, "lines")
					items := make([]any, len(lines))
					for i, l := range lines {
						items[i] = l
					}
					return items, err
				},
				MaxParallel: 2,
			},
			Run: func(_ context.Context, in *batuta.Input) (any, error) {
				sku, err := batuta.EventData[string](in)
				return "reserved " + sku, err
			}},
		{Name: "confirm", Deps: []string{"reserve"}, Run: func(_ context.Context, in *batuta.Input) (any, error) {
			return batuta.ItemOutputs[string](in, "reserve")
		}},
	}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	id, _ := o.Submit(ctx, "restock", batuta.Event{})
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.State, run.Task("confirm").Output)
	items, _ := o.ListRuns(ctx, batuta.RunFilter{Parent: id, ParentTask: "reserve"})
	fmt.Println(len(items), "item runs of", batuta.ItemWorkflow("restock", "reserve"))
	// Output:
	// succeeded [reserved apple reserved pear reserved plum]
	// 3 item runs of restock.reserve.item
}

// Too many failed items fail a ForEach task with an *ItemsError naming the
// first ones; Hooks see the error value. Tolerate lets some fail.
func ExampleItemsError() {
	failed := make(chan error, 1)
	hooks := hookFunc(func(a batuta.AttemptInfo) {
		if a.Workflow == "audit" && a.Err != nil {
			failed <- a.Err
		}
	})
	o, _ := batuta.New(batuta.Config{Logger: quiet, Hooks: []batuta.Hooks{hooks}})
	_ = o.Register(&batuta.Workflow{Name: "audit", Tasks: []batuta.Task{{
		Name:    "check",
		Retry:   batuta.RetryPolicy{MaxAttempts: 1},
		ForEach: &batuta.ForEach{Items: func(*batuta.Input) ([]any, error) { return []any{1, 2, 3, 4}, nil }, Tolerate: 1},
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			n, _ := batuta.EventData[int](in)
			if n%2 == 0 {
				return nil, fmt.Errorf("%d is even", n)
			}
			return n, nil
		},
	}}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	id, _ := o.Submit(ctx, "audit", batuta.Event{})
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.State)
	var itemsErr *batuta.ItemsError
	if err := <-failed; errors.As(err, &itemsErr) {
		fmt.Println("failed items:", itemsErr.Failed, "of", itemsErr.Total, "first:", itemsErr.First[0].Index,
			errors.Is(err, batuta.ErrChildFailed))
	}
	// Output:
	// failed
	// failed items: 2 of 4 first: 1 true
}

// hookFunc calls fn for every finished attempt.
type hookFunc func(batuta.AttemptInfo)

func (hookFunc) RunStarted(context.Context, batuta.RunInfo)  {}
func (hookFunc) RunFinished(context.Context, batuta.RunInfo) {}
func (hookFunc) AttemptStarted(ctx context.Context, _ batuta.AttemptInfo) context.Context {
	return ctx
}
func (f hookFunc) AttemptFinished(_ context.Context, a batuta.AttemptInfo) { f(a) }
