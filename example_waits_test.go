package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/batuta-dev/batuta"
)

// untilWaiting polls a run until its task waits (for examples).
func untilWaiting(o *batuta.Orchestrator, runID, task string) *batuta.TaskRun {
	for {
		r, err := o.GetRun(context.Background(), runID)
		if err != nil {
			return nil
		}
		if tr := r.Task(task); tr.WaitingFor != "" && tr.State == batuta.TaskPending {
			return tr
		}
		time.Sleep(time.Millisecond)
	}
}

// Task.StartAt is a durable timer computed from the task's inputs: the
// body runs not before that time, and meanwhile the run holds no worker
// and spends no attempt. Task.Delay with no Run is a pure sleep step.
func ExampleTask_startAt() {
	type order struct {
		ShipAt time.Time `json:"ship_at"`
	}
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "remind", Tasks: []batuta.Task{
		{
			Name: "remind",
			StartAt: func(in *batuta.Input) (time.Time, error) {
				ord, err := batuta.EventData[order](in)
				return ord.ShipAt.Add(-24 * time.Hour), err
			},
			Run: func(context.Context, *batuta.Input) (any, error) { return "reminded", nil },
		},
		{Name: "pause", Deps: []string{"remind"}, Delay: 20 * time.Millisecond},
	}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	due := time.Now().Add(200 * time.Millisecond)
	data := fmt.Appendf(nil, `{"ship_at": %q}`, due.Add(24*time.Hour).Format(time.RFC3339Nano))
	id, _ := o.Submit(ctx, "remind", batuta.Event{Data: data})
	run, _ := o.Wait(ctx, id)
	remind := run.Task("remind")
	fmt.Println(run.State, remind.Output, "waited for:", remind.WaitingFor)
	fmt.Println("not early:", !remind.Attempts[0].StartedAt.Before(due), "attempts:", len(remind.Attempts))
	// Output:
	// succeeded reminded waited for: timer
	// not early: true attempts: 1
}

// A signal completes a waiting task with its data as the task's output;
// the dependents read it with Output.
func ExampleOrchestrator_Signal() {
	type shipment struct {
		Carrier string `json:"carrier"`
	}
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "ship", Tasks: []batuta.Task{
		{Name: "shipped", Signal: &batuta.SignalWait{Name: "shipped", Timeout: 72 * time.Hour}},
		{Name: "notify", Deps: []string{"shipped"}, Run: func(_ context.Context, in *batuta.Input) (any, error) {
			s, err := batuta.Output[shipment](in, "shipped")
			return "shipped with " + s.Carrier, err
		}},
	}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	id, _ := o.Submit(ctx, "ship", batuta.Event{})
	fmt.Println(untilWaiting(o, id, "shipped").WaitingFor)
	_ = o.Signal(ctx, id, "shipped", shipment{Carrier: "ups"})
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.State, run.Task("notify").Output)
	err := o.Signal(ctx, id, "shipped", shipment{})
	fmt.Println(errors.Is(err, batuta.ErrNoWaiter))
	// Output:
	// signal shipped
	// succeeded shipped with ups
	// true
}

// SignalWhere signals the waiting runs of a workflow by business key (the
// runs' event Subject), for a webhook that knows the order, not the run.
// A wait with TimeoutSucceed ends with its Default when no signal comes.
func ExampleOrchestrator_SignalWhere() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "payment", Tasks: []batuta.Task{
		{Name: "paid", Signal: &batuta.SignalWait{
			Name: "paid", Timeout: 50 * time.Millisecond,
			OnTimeout: batuta.TimeoutSucceed, Default: "unpaid",
		}},
	}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	a, _ := o.Submit(ctx, "payment", batuta.Event{Subject: "order-1"})
	b, _ := o.Submit(ctx, "payment", batuta.Event{Subject: "order-2"})
	// Sent at once: kept for the task if the run has not reached it yet.
	n, _ := o.SignalWhere(ctx, "payment", "order-1", "paid", "paid by card")
	fmt.Println("signaled", n)
	for _, id := range []string{a, b} {
		run, _ := o.Wait(ctx, id)
		fmt.Println(run.Event.Subject, run.Task("paid").Output)
	}
	// Output:
	// signaled 1
	// order-1 paid by card
	// order-2 unpaid
}
