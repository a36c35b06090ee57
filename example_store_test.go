package batuta_test

import (
	"context"
	"fmt"
	"sync"

	"github.com/batuta-dev/batuta"
)

// The in-memory store is the default (Config{} makes one); make it
// yourself to bound what it keeps. Runs live as long as the process: use
// batutasqlite or batutapg to survive a crash.
func ExampleNewMemoryStore() {
	store := batuta.NewMemoryStore(batuta.MemoryStoreConfig{KeepFinished: 1000})
	o, _ := batuta.New(batuta.Config{Store: store, Logger: quiet})
	_ = o.Register(&batuta.Workflow{Name: "greet", Tasks: []batuta.Task{{
		Name: "hello",
		Run: func(context.Context, *batuta.Input) (any, error) {
			return map[string]int{"n": 1}, nil
		},
	}}})
	stop := runInBackground(o)
	defer stop()
	ctx := context.Background()
	id, _ := o.Submit(ctx, "greet", batuta.Event{ID: "evt-1"})
	run, _ := o.Wait(ctx, id)

	// Outputs stay Go values in memory; durable stores keep them as JSON
	// (json.RawMessage), which OutputAs reads either way.
	out, _ := batuta.OutputAs[map[string]int](run.Task("hello").Output)
	fmt.Println(store.Durable(), out["n"])
	runs, _ := o.ListRuns(ctx, batuta.RunFilter{Workflow: "greet", State: batuta.RunSucceeded})
	fmt.Println(len(runs), runs[0].Event.ID)
	// Output:
	// false 1
	// 1 evt-1
}

// attemptLog is a Hooks that records attempts; embedding NopHooks leaves
// the other methods empty.
type attemptLog struct {
	batuta.NopHooks
	mu    sync.Mutex
	lines []string
}

func (h *attemptLog) AttemptFinished(_ context.Context, a batuta.AttemptInfo) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lines = append(h.lines, fmt.Sprintf("%s/%s attempt %d: %s", a.Workflow, a.Task, a.Attempt, a.Outcome))
}

// Hooks observe every run and attempt; slog logging is built on them and
// batutaotel turns them into OpenTelemetry spans and metrics. They run on
// the orchestrator's goroutines, so they must be quick.
func ExampleHooks() {
	h := &attemptLog{}
	o, _ := batuta.New(batuta.Config{Logger: quiet, Hooks: []batuta.Hooks{h}})
	_ = o.Register(&batuta.Workflow{Name: "greet", Tasks: []batuta.Task{
		{Name: "name", Run: func(context.Context, *batuta.Input) (any, error) { return "Ada", nil }},
		{Name: "hello", Deps: []string{"name"}, Run: func(context.Context, *batuta.Input) (any, error) { return nil, nil }},
	}})
	stop := runInBackground(o)
	ctx := context.Background()
	id, _ := o.Submit(ctx, "greet", batuta.Event{})
	_, _ = o.Wait(ctx, id)
	stop() // after Run returned, every hook call has returned
	for _, l := range h.lines {
		fmt.Println(l)
	}
	// Output:
	// greet/name attempt 1: succeeded
	// greet/hello attempt 1: succeeded
}
