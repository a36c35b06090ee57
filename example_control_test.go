package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batuta-dev/batuta"
)

// runInBackground starts o.Run and returns the func that stops it and waits
// for it to return.
func runInBackground(o *batuta.Orchestrator) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	return func() { cancel(); <-done }
}

// Cancel stops a run: tasks not started are canceled at once, running tasks
// see their ctx canceled. A canceled run is not a failed one.
func ExampleOrchestrator_Cancel() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	started := make(chan struct{})
	_ = o.Register(&batuta.Workflow{Name: "export", Tasks: []batuta.Task{
		{Name: "dump", Run: func(ctx context.Context, _ *batuta.Input) (any, error) {
			close(started)
			<-ctx.Done() // a long task that honours its ctx
			return nil, ctx.Err()
		}},
		{Name: "upload", Deps: []string{"dump"}, Run: func(context.Context, *batuta.Input) (any, error) {
			return "uploaded", nil
		}},
	}})
	stop := runInBackground(o)
	defer stop()

	ctx := context.Background()
	id, _ := o.Submit(ctx, "export", batuta.Event{ID: "export-2026-03"})
	<-started
	if err := o.Cancel(ctx, id); err != nil {
		panic(err)
	}
	run, _ := o.Wait(ctx, id)
	fmt.Println(run.State)
	for _, t := range run.Tasks {
		fmt.Println(t.Name, t.State)
	}
	fmt.Println(errors.Is(o.Cancel(ctx, "no-such-run"), batuta.ErrRunNotFound))
	// Output:
	// canceled
	// dump canceled
	// upload canceled
	// true
}

// Wait blocks until the run finished or its ctx ends. A run submitted
// before Run starts waits in the store until Run starts. The snapshot Wait
// returns (GetRun returns the same at any time) has each task's state,
// attempts, error and output.
func ExampleOrchestrator_Wait() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	calls := 0
	_ = o.Register(&batuta.Workflow{Name: "sync", Tasks: []batuta.Task{
		{Name: "fetch", Retry: batuta.RetryPolicy{InitialDelay: time.Millisecond}, Run: func(context.Context, *batuta.Input) (any, error) {
			calls++ // one task runs one attempt at a time
			if calls == 1 {
				return nil, errors.New("connection reset")
			}
			return 42, nil
		}},
	}})
	ctx := context.Background()
	id, _ := o.Submit(ctx, "sync", batuta.Event{ID: "sync-1"})

	// Nothing runs yet: Wait gives up when its ctx ends.
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	_, err := o.Wait(short, id)
	cancel()
	fmt.Println(errors.Is(err, context.DeadlineExceeded))

	stop := runInBackground(o)
	defer stop()
	run, err := o.Wait(ctx, id)
	if err != nil {
		panic(err)
	}
	fetch := run.Task("fetch")
	fmt.Println(run.State, fetch.State, fetch.Output)
	for _, a := range fetch.Attempts {
		fmt.Println("attempt", a.Number, a.Outcome, a.Error)
	}
	// Output:
	// true
	// succeeded succeeded 42
	// attempt 1 retry connection reset
	// attempt 2 succeeded
}

// When Run's ctx ends, running tasks get Config.ShutdownGrace to finish;
// then their ctx is canceled and their claim goes back to the store without
// spending an attempt. With a durable store another process (or this one,
// restarted) picks the task up again; here the same orchestrator runs again.
func ExampleOrchestrator_Run() {
	o, _ := batuta.New(batuta.Config{Logger: quiet, ShutdownGrace: time.Millisecond})
	var runs atomic.Int32
	started := make(chan struct{}, 2)
	_ = o.Register(&batuta.Workflow{Name: "report", Tasks: []batuta.Task{
		{Name: "build", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			started <- struct{}{}
			if runs.Add(1) == 1 {
				<-ctx.Done() // interrupted by the shutdown
				return nil, ctx.Err()
			}
			return fmt.Sprintf("built on attempt %d", in.Attempt()), nil
		}},
	}})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	id, _ := o.Submit(ctx, "report", batuta.Event{ID: "report-1"})
	<-started
	stop() // SIGTERM, say
	fmt.Println("Run returned", <-done)
	run, _ := o.GetRun(context.Background(), id)
	fmt.Println(run.State, run.Task("build").State, len(run.Task("build").Attempts), "attempts recorded")

	stopAgain := runInBackground(o)
	defer stopAgain()
	run, _ = o.Wait(context.Background(), id)
	fmt.Println(run.State, run.Task("build").Output)
	// Output:
	// Run returned <nil>
	// running pending 0 attempts recorded
	// succeeded built on attempt 1
}

// Register validates the whole workflow and registers nothing if any of it
// is wrong; each message names the field and says what to put there.
func ExampleOrchestrator_Register() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	noop := func(context.Context, *batuta.Input) (any, error) { return nil, nil }
	err := o.Register(&batuta.Workflow{Name: "loop", Tasks: []batuta.Task{
		{Name: "a", Deps: []string{"c"}, Run: noop},
		{Name: "b", Deps: []string{"a"}, Run: noop},
		{Name: "c", Deps: []string{"b"}, Run: noop},
	}})
	var we *batuta.WorkflowError
	fmt.Println(errors.Is(err, batuta.ErrInvalidWorkflow), errors.As(err, &we))
	fmt.Println(err)

	_, err = o.Submit(context.Background(), "lop", batuta.Event{})
	fmt.Println(errors.Is(err, batuta.ErrUnknownWorkflow))
	// Output:
	// true true
	// batuta: invalid workflow "loop": task "a": dependency cycle: a -> b -> c -> a; Task.Deps must not loop: remove one of these dependencies
	// true
}

// A custom source is any func that calls fire once per event; an event
// counts as delivered when fire returned nil. Bind ties it to a workflow,
// and Run starts it.
func ExampleTriggerFunc() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	var mu sync.Mutex
	var seen []string
	finished := make(chan struct{}, 3)
	_ = o.Register(&batuta.Workflow{Name: "ingest", Tasks: []batuta.Task{{
		Name: "store",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			mu.Lock()
			seen = append(seen, in.Event().ID+" "+string(in.Event().Data))
			mu.Unlock()
			finished <- struct{}{}
			return nil, nil
		},
	}}})
	lines := []string{"alpha", "beta", "alpha"} // the third is a redelivery of the first
	trig := batuta.TriggerFunc(func(ctx context.Context, fire batuta.FireFunc) error {
		for _, l := range lines {
			// Keep the event at the source until fire accepts it.
			for fire(ctx, batuta.Event{ID: "line-" + l, Source: "file/input.txt", Data: []byte(l)}) != nil {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
		<-ctx.Done()
		return nil
	})
	if err := o.Bind("ingest", trig); err != nil {
		panic(err)
	}
	stop := runInBackground(o)
	<-finished
	<-finished
	stop()
	slices.Sort(seen) // runs of different events run in parallel
	fmt.Println(strings.Join(seen, ", "))
	// Output: line-alpha alpha, line-beta beta
}
