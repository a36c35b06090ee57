package batuta_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/batuta-dev/batuta"
)

// The README's first workflow, runnable: five concepts (Orchestrator,
// Workflow, Task, Event, a Trigger). A run starts from Submit or from a
// trigger (here the in-memory queue's); a failed charge ends in the
// OneFailed task, the workflow's failure destination.
func Example_firstWorkflow() {
	type Order struct {
		ID         int64 `json:"id"`
		TotalCents int64 `json:"total_cents"`
	}
	emailed := make(chan int64, 2)
	o, _ := batuta.New(batuta.Config{Logger: quiet}) // runs in memory
	err := o.Register(&batuta.Workflow{
		Name: "order-placed",
		Tasks: []batuta.Task{
			{Name: "validate", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				return batuta.EventData[Order](in) // the event's JSON, typed
			}},
			{Name: "charge", Deps: []string{"validate"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				order, err := batuta.Output[Order](in, "validate") // what an earlier task returned
				if err != nil {
					return nil, err
				}
				if order.TotalCents <= 0 {
					return nil, batuta.Permanent(fmt.Errorf("order %d: nothing to charge", order.ID))
				}
				return fmt.Sprintf("receipt-%d", order.ID), nil
			}},
			{Name: "email", Deps: []string{"charge"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				order, _ := batuta.Output[Order](in, "validate") // any ancestor, not only Deps
				emailed <- order.ID
				return nil, nil
			}},
			{Name: "refund-alert", Deps: []string{"charge"}, When: batuta.OneFailed, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				return "paged on-call", nil
			}},
		},
	})
	if err != nil {
		panic(err)
	}
	q, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	defer q.Close()
	deadQ, _ := batuta.NewMemoryQueue(batuta.MemoryQueueConfig{})
	defer deadQ.Close()
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{Queue: q, DeadLetter: batuta.DeadLetterQueue(deadQ), Logger: quiet})
	if err != nil {
		panic(err)
	}
	if err := o.Bind("order-placed", trig); err != nil {
		panic(err)
	}
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()

	// A run started by hand...
	id, _ := o.Submit(ctx, "order-placed", batuta.Event{ID: "order-42", Data: []byte(`{"id":42,"total_cents":1250}`)})
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.State, run.Task("charge").Output, run.Task("refund-alert").State)
	fmt.Println("emailed order", <-emailed)

	// ...one started by a message (the event's Data is the body)...
	_ = q.Publish(ctx, batuta.Message{ID: "order-43", Body: []byte(`{"id":43,"total_cents":990}`)})
	fmt.Println("emailed order", <-emailed)

	// ...and one that fails: the failure lands in refund-alert.
	id, _ = o.Submit(ctx, "order-placed", batuta.Event{ID: "order-44", Data: []byte(`{"id":44,"total_cents":0}`)})
	run, _ = o.Wait(ctx, id)
	fmt.Println(run.State)
	for _, t := range run.Tasks {
		fmt.Println(strings.TrimSpace(fmt.Sprint(t.Name, " ", t.State, " ", t.Error)))
	}
	// Output:
	// succeeded receipt-42 skipped
	// emailed order 42
	// emailed order 43
	// failed
	// validate succeeded
	// charge failed order 44: nothing to charge
	// email upstream_failed join rule all_succeeded: dependency charge is failed
	// refund-alert succeeded
}
