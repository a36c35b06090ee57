package batuta_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
)

// StartAfter delays a run: it is recorded at once (listed, cancelable,
// deduplicated by Event.ID) but its first task starts only when the delay
// has passed, holding no worker meanwhile.
func ExampleStartAfter() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "reminder", Tasks: []batuta.Task{{
		Name: "send",
		Run:  func(context.Context, *batuta.Input) (any, error) { return "sent", nil },
	}}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	submitted := time.Now()
	id, _ := o.Submit(ctx, "reminder", batuta.Event{ID: "user-7/tomorrow-9am"}, batuta.StartAfter(50*time.Millisecond))
	run, _ := o.GetRun(ctx, id)
	fmt.Println(run.State, "until", run.StartAt.Sub(submitted).Round(50*time.Millisecond))
	run, _ = o.Wait(ctx, id)
	started := run.Task("send").Attempts[0].StartedAt
	fmt.Println(run.State, run.Task("send").Output, "not early:", !started.Before(run.StartAt))
	// Output:
	// pending until 50ms
	// succeeded sent not early: true
}

// Workflow.Concurrency keeps at most Max runs per key in progress: here
// one run per customer at a time, while different customers run side by
// side. Runs over the limit wait their turn (ConcurrencyQueue).
func ExampleConcurrency() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	running := map[string]int{}
	most := map[string]int{}
	var mu sync.Mutex
	track := func(customer string, d int) {
		mu.Lock()
		defer mu.Unlock()
		running[customer] += d
		most[customer] = max(most[customer], running[customer])
	}
	_ = o.Register(&batuta.Workflow{
		Name:        "sync-customer",
		Concurrency: &batuta.Concurrency{Key: func(ev batuta.Event) string { return ev.Subject }, Max: 1},
		Tasks: []batuta.Task{
			{Name: "fetch", Run: func(_ context.Context, in *batuta.Input) (any, error) {
				track(in.Event().Subject, +1)
				return nil, nil
			}},
			{Name: "store", Deps: []string{"fetch"}, Run: func(_ context.Context, in *batuta.Input) (any, error) {
				time.Sleep(time.Millisecond)
				track(in.Event().Subject, -1)
				return nil, nil
			}},
		},
	})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	var ids []string
	for i := range 20 {
		id, _ := o.Submit(ctx, "sync-customer", batuta.Event{Subject: []string{"acme", "globex"}[i%2]})
		ids = append(ids, id)
	}
	for _, id := range ids {
		_, _ = o.Wait(ctx, id)
	}
	run, _ := o.GetRun(ctx, ids[0])
	fmt.Println("key:", run.ConcurrencyKey)
	fmt.Println("most at once: acme", most["acme"], "globex", most["globex"])
	// Output:
	// key: sync-customer:acme
	// most at once: acme 1 globex 1
}

// Pause stops a workflow from starting tasks, on every orchestrator
// sharing the store, while its runs are still accepted; Resume starts
// them.
func ExampleOrchestrator_Pause() {
	o, _ := batuta.New(batuta.Config{Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "email", Tasks: []batuta.Task{{
		Name: "send",
		Run:  func(context.Context, *batuta.Input) (any, error) { return "sent", nil },
	}}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	_ = o.Pause(ctx, "email") // the provider is down
	paused, _ := o.Paused(ctx)
	id, _ := o.Submit(ctx, "email", batuta.Event{ID: "welcome-42"})
	run, _ := o.GetRun(ctx, id)
	fmt.Println(paused, run.State)
	_ = o.Resume(ctx, "email")
	run, _ = o.Wait(ctx, id)
	fmt.Println(run.State, run.Task("send").Output)
	// Output:
	// [email] pending
	// succeeded sent
}
