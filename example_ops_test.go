package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
)

// Retry resumes a failed run from where it failed: the downstream API was
// down, it is back, and only the task that called it (and what depends on
// it) runs again. The upstream task's output is kept.
func ExampleOrchestrator_Retry() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	var apiDown atomic.Bool
	apiDown.Store(true)
	fetches := 0
	_ = o.Register(&batuta.Workflow{Name: "invoice", Tasks: []batuta.Task{
		{Name: "render", Run: func(context.Context, *batuta.Input) (any, error) {
			fetches++
			return "invoice.pdf", nil
		}},
		{Name: "send", Deps: []string{"render"}, Retry: batuta.RetryPolicy{MaxAttempts: 1},
			Run: func(_ context.Context, in *batuta.Input) (any, error) {
				if apiDown.Load() {
					return nil, errors.New("mail API: 503")
				}
				doc, _ := batuta.Output[string](in, "render")
				return "sent " + doc, nil
			}},
	}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()

	id, _ := o.Submit(ctx, "invoice", batuta.Event{ID: "invoice-7"})
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.State, run.Error)

	apiDown.Store(false)
	if err := o.Retry(ctx, id); err != nil {
		panic(err)
	}
	run, _ = o.Wait(ctx, id)
	fmt.Println(run.State, run.Task("send").Output, "retries:", run.Retries, "renders:", fetches)
	fmt.Println(errors.Is(o.Retry(ctx, id), batuta.ErrNotRetryable))
	// Output:
	// failed task send failed: mail API: 503
	// succeeded sent invoice.pdf retries: 1 renders: 1
	// true
}

// RetryRuns retries every run a filter selects, in bounded batches, with
// progress after each batch: "show me the failures, and retry them".
func ExampleOrchestrator_RetryRuns() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	var apiDown atomic.Bool
	apiDown.Store(true)
	_ = o.Register(&batuta.Workflow{Name: "notify", Tasks: []batuta.Task{
		{Name: "push", Retry: batuta.RetryPolicy{MaxAttempts: 1}, Run: func(context.Context, *batuta.Input) (any, error) {
			if apiDown.Load() {
				return nil, errors.New("push API: connection refused")
			}
			return nil, nil
		}},
	}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()

	evs := make([]batuta.Event, 250)
	ids, _ := o.SubmitMany(ctx, "notify", evs)
	for _, id := range ids {
		_, _ = o.Wait(ctx, id)
	}
	failed, _ := o.ListRuns(ctx, batuta.RunFilter{Workflow: "notify", State: batuta.RunFailed, Limit: 1000})
	fmt.Println("failed:", len(failed))

	apiDown.Store(false)
	res, err := o.RetryRuns(ctx,
		batuta.RunFilter{Workflow: "notify", State: batuta.RunFailed, ErrorContains: "connection refused"},
		batuta.BatchSize(100),
		batuta.WithProgress(func(p batuta.BulkResult) { fmt.Printf("retried %d/%d\n", p.Done, p.Matched) }))
	if err != nil {
		panic(err)
	}
	for _, id := range ids {
		_, _ = o.Wait(ctx, id)
	}
	ok, _ := o.ListRuns(ctx, batuta.RunFilter{Workflow: "notify", State: batuta.RunSucceeded, Limit: 1000})
	fmt.Println(res.Done, "retried,", len(ok), "succeeded")
	// Output:
	// failed: 250
	// retried 100/100
	// retried 200/200
	// retried 250/250
	// 250 retried, 250 succeeded
}

// Workflow.OnFailure runs once per failed run, with the run's snapshot;
// Workflow.DeadLetter hands the failed run's event to a queue, to be
// redriven later.
func ExampleWorkflow_onFailure() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	alerts := make(chan string, 1)
	dlq, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	_ = o.Register(&batuta.Workflow{
		Name: "payout",
		Tasks: []batuta.Task{{Name: "transfer", Retry: batuta.RetryPolicy{MaxAttempts: 1}, Run: func(context.Context, *batuta.Input) (any, error) {
			return nil, errors.New("bank: account closed")
		}}},
		OnFailure: func(_ context.Context, run *batuta.Run) error {
			alerts <- fmt.Sprintf("%s %s: %s", run.Event.ID, run.State, run.Task("transfer").Error)
			return nil
		},
		DeadLetter: batuta.DeadLetterQueue(dlq),
	})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()

	_, _ = o.Submit(ctx, "payout", batuta.Event{ID: "payout-3"})
	fmt.Println(<-alerts)
	ds, _ := dlq.Receive(ctx, 1)
	dl := batuta.ParseDeadLetterMessage(ds[0].Message)
	fmt.Println(dl.Event.ID, dl.Reason, dl.Workflow)
	// Output:
	// payout-3 failed: bank: account closed
	// payout-3 failed payout
}

// DeadLetterBoxes lists the dead-letter boxes of the bound triggers: here
// a queue trigger whose dead letters go to an in-memory queue. A message
// the trigger could not read is listed with its reason, then redriven to
// the source queue once the consumer can read it.
func ExampleOrchestrator_DeadLetterBoxes() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	done := make(chan string, 1)
	_ = o.Register(&batuta.Workflow{Name: "orders", Tasks: []batuta.Task{{Name: "book", Run: func(_ context.Context, in *batuta.Input) (any, error) {
		done <- in.Event().ID
		return nil, nil
	}}}})
	src, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	dlq, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	var knowsV2 atomic.Bool
	trig, _ := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: src, DeadLetter: batuta.DeadLetterQueue(dlq), Logger: quiet,
		Event: func(d batuta.Delivery) (batuta.Event, error) {
			if d.Headers["schema"] == "v2" && !knowsV2.Load() {
				return batuta.Event{}, errors.New("unknown schema v2")
			}
			return batuta.DefaultQueueEvent(d, "orders"), nil
		},
	})
	_ = o.Bind("orders", trig)
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()

	_ = src.Publish(ctx, batuta.Message{ID: "order-1", Headers: map[string]string{"schema": "v2"}})
	box := o.DeadLetterBoxes()[0]
	var items []batuta.DeadLetterItem
	for len(items) == 0 { // the trigger hands it over asynchronously
		time.Sleep(time.Millisecond)
		items, _ = box.DeadLetters(ctx, batuta.DeadLetterQuery{})
	}
	fmt.Println(box.Workflow, items[0].Event.ID, items[0].Reason, items[0].Error)

	knowsV2.Store(true) // a consumer that reads v2 is deployed
	n, _ := box.Redrive(ctx, items[0].ID)
	fmt.Println("redriven:", n, "ran:", <-done)
	n, _ = box.Redrive(ctx, items[0].ID)
	fmt.Println("again:", n)
	// Output:
	// orders order-1 malformed unknown schema v2
	// redriven: 1 ran: order-1
	// again: 0
}
