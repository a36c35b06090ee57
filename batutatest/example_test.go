package batutatest_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// A fake clock drives the orchestrator's time: a retry due in an hour runs
// as soon as the test advances the clock by an hour, with no sleeping.
func ExampleNewFakeClock() {
	clock := batutatest.NewFakeClock(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC))
	o, _ := batuta.New(batuta.Config{Clock: clock, Logger: slog.New(slog.DiscardHandler)})
	attempts := 0
	_ = o.Register(&batuta.Workflow{Name: "sync", Tasks: []batuta.Task{{
		Name:  "pull",
		Retry: batuta.RetryPolicy{InitialDelay: time.Hour, NoJitter: true},
		Run: func(context.Context, *batuta.Input) (any, error) {
			attempts++ // one task runs one attempt at a time
			if attempts == 1 {
				return nil, errors.New("upstream down")
			}
			return "pulled", nil
		},
	}}})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { stop(); <-done }()

	id, _ := o.Submit(ctx, "sync", batuta.Event{ID: "sync-1"})
	clock.WaitForTimers(1, 10*time.Second) // the retry, due in an hour
	clock.Advance(time.Hour)
	run, _ := o.Wait(ctx, id)
	for _, a := range run.Task("pull").Attempts {
		fmt.Println("attempt", a.Number, a.StartedAt.Format("15:04"), a.Outcome)
	}
	// Output:
	// attempt 1 12:00 retry
	// attempt 2 13:00 succeeded
}

// A push trigger stands in for a real source in tests: Push returns what
// fire returned, so a test sees acceptance and backpressure (ErrBusy) as a
// database outbox or a queue would.
func ExampleNewPushTrigger() {
	o, _ := batuta.New(batuta.Config{MaxInFlightRuns: 1, Logger: slog.New(slog.DiscardHandler)})
	release := make(chan struct{})
	_ = o.Register(&batuta.Workflow{Name: "import", Tasks: []batuta.Task{{
		Name: "load",
		Run: func(context.Context, *batuta.Input) (any, error) {
			<-release
			return nil, nil
		},
	}}})
	push := batutatest.NewPushTrigger()
	_ = o.Bind("import", push)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { stop(); <-done }()

	fmt.Println(push.Push(ctx, batuta.Event{ID: "file-1"}))
	err := push.Push(ctx, batuta.Event{ID: "file-2"}) // one run unfinished: at the cap
	fmt.Println(errors.Is(err, batuta.ErrBusy))
	close(release)
	// Output:
	// <nil>
	// true
}
