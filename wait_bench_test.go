package batuta_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
)

// BenchmarkTimerLateness measures how late a durable timer fires on the
// in-memory store: each run's task waits on Task.StartAt (5 ms after the
// submit, handed back to the store with OutcomeWait) and its body notes
// how long after the due time it started. Reports the median and the
// maximum.
//
//	go test -run '^$' -bench BenchmarkTimerLateness -benchtime 200x .
func BenchmarkTimerLateness(b *testing.B) {
	late := make(chan time.Duration, 1)
	wf := &batuta.Workflow{Name: "timer", Tasks: []batuta.Task{{
		Name: "t", StartAt: startAtFromEvent,
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			now := time.Now()
			due, err := startAtFromEvent(in)
			late <- now.Sub(due)
			return nil, err
		},
	}}}
	o, h := benchOrchestrator(b, wf)
	ctx := context.Background()
	lates := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		data, _ := json.Marshal(dueData{Due: time.Now().Add(5 * time.Millisecond)})
		id, err := o.Submit(ctx, "timer", batuta.Event{Data: data})
		if err != nil {
			b.Fatal(err)
		}
		lates = append(lates, <-late)
		<-h.ch(id)
	}
	b.StopTimer()
	slices.Sort(lates)
	b.ReportMetric(float64(lates[len(lates)/2].Microseconds()), "late-p50-µs")
	b.ReportMetric(float64(lates[len(lates)-1].Microseconds()), "late-max-µs")
}

// BenchmarkSignalToNextTask measures, on the in-memory store, the time
// from Orchestrator.Signal to the start of the task that depends on the
// waiting one.
//
//	go test -run '^$' -bench BenchmarkSignalToNextTask -benchtime 200x .
func BenchmarkSignalToNextTask(b *testing.B) {
	started := make(chan time.Time, 1)
	wf := &batuta.Workflow{Name: "sig", Tasks: []batuta.Task{
		{Name: "wait", Signal: &batuta.SignalWait{Name: "go"}},
		{Name: "next", Deps: []string{"wait"}, Run: func(context.Context, *batuta.Input) (any, error) {
			started <- time.Now()
			return nil, nil
		}},
	}}
	o, h := benchOrchestrator(b, wf)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		id, err := o.Submit(ctx, "sig", batuta.Event{})
		if err != nil {
			b.Fatal(err)
		}
		for { // until the task waits
			r, err := o.GetRun(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			if r.Task("wait").WaitingFor != "" {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
		sent := time.Now()
		if err := o.Signal(ctx, id, "go", nil); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-started).Sub(sent))
		<-h.ch(id)
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
}
