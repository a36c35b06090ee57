package batuta

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeRuns is a Runs for the cron tests: it records fired events, creates
// one run per event ID (deduplicating like a store), and lets the test
// finish runs by hand. It keeps the tests independent of the executor.
type fakeRuns struct {
	clock Clock

	mu        sync.Mutex
	fired     []Event           // accepted events, in order (duplicates excluded)
	attempts  int               // calls to Fire
	byEvent   map[string]string // event ID -> run ID
	runs      map[string]*fakeRun
	order     []string // run IDs in creation order
	canceled  []string
	last      time.Time
	recorded  []time.Time // every RecordTick argument
	failures  int         // the next failures calls to Fire fail with ErrBusy
	failUntil time.Time   // calls to Fire fail with ErrBusy before this time
}

type fakeRun struct {
	run  Run
	done chan struct{}
}

func newFakeRuns(clock Clock) *fakeRuns {
	return &fakeRuns{clock: clock, byEvent: map[string]string{}, runs: map[string]*fakeRun{}}
}

func (f *fakeRuns) Workflow() string { return "wf" }

func (f *fakeRuns) Fire(_ context.Context, ev Event) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	if f.failures > 0 {
		f.failures--
		return "", fmt.Errorf("fake store: %w", ErrBusy)
	}
	if f.clock.Now().Before(f.failUntil) {
		return "", fmt.Errorf("fake store: %w", ErrBusy)
	}
	if id, ok := f.byEvent[ev.ID]; ok {
		return id, nil
	}
	id := fmt.Sprintf("run-%d", len(f.order)+1)
	f.byEvent[ev.ID] = id
	f.runs[id] = &fakeRun{run: Run{ID: id, Workflow: "wf", Event: ev, State: RunRunning}, done: make(chan struct{})}
	f.order = append(f.order, id)
	f.fired = append(f.fired, ev)
	return id, nil
}

func (f *fakeRuns) Get(_ context.Context, id string) (*Run, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.runs[id]
	if !ok {
		return nil, ErrRunNotFound
	}
	snap := r.run
	return &snap, nil
}

func (f *fakeRuns) Wait(ctx context.Context, id string) (*Run, error) {
	f.mu.Lock()
	r, ok := f.runs[id]
	f.mu.Unlock()
	if !ok {
		return nil, ErrRunNotFound
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.done:
		return f.Get(ctx, id)
	}
}

func (f *fakeRuns) Cancel(_ context.Context, id string) error {
	f.mu.Lock()
	f.canceled = append(f.canceled, id)
	f.mu.Unlock()
	f.finish(id, RunCanceled)
	return nil
}

func (f *fakeRuns) Durable() bool { return true }
func (f *fakeRuns) Clock() Clock  { return f.clock }

func (f *fakeRuns) LastTick(context.Context, string) (time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last, nil
}

func (f *fakeRuns) RecordTick(_ context.Context, _ string, tick time.Time) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recorded = append(f.recorded, tick)
	if tick.After(f.last) {
		f.last = tick
		return true, nil
	}
	return false, nil
}

// finish ends a run (idempotent).
func (f *fakeRuns) finish(id string, st RunState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.runs[id]
	if r.run.Finished() {
		return
	}
	r.run.State = st
	close(r.done)
}

// finishRun ends the n-th run (from 1) as succeeded.
func (f *fakeRuns) finishRun(n int) {
	f.mu.Lock()
	id := f.order[n-1]
	f.mu.Unlock()
	f.finish(id, RunSucceeded)
}

// ticks returns the tick times of the fired events, in UTC.
func (f *fakeRuns) ticks() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]time.Time, len(f.fired))
	for i, ev := range f.fired {
		out[i] = ev.Time.UTC()
	}
	return out
}

func (f *fakeRuns) lastTick() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func (f *fakeRuns) canceledRuns() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.canceled...)
}

// waitTicks waits until exactly the given ticks have fired, in order.
func (f *fakeRuns) waitTicks(t *testing.T, want ...time.Time) {
	t.Helper()
	want = append(make([]time.Time, 0, len(want)), want...)
	for i := range want {
		want[i] = want[i].UTC()
	}
	require.Eventually(t, func() bool { return len(f.ticks()) >= len(want) }, 5*time.Second, time.Millisecond,
		"want ticks %v, fired %v", want, f.ticks())
	require.Equal(t, want, f.ticks())
}

// waitRecorded waits until tick is the last recorded tick.
func (f *fakeRuns) waitRecorded(t *testing.T, tick time.Time) {
	t.Helper()
	require.Eventually(t, func() bool { return f.lastTick().Equal(tick) }, 5*time.Second, time.Millisecond,
		"last tick %v, want %v", f.lastTick(), tick)
}
