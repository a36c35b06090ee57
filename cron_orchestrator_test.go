package batuta_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/stretchr/testify/require"
)

// TestCronThroughOrchestrator runs a cron trigger bound to a real
// orchestrator (in-memory store, system clock, 100ms ticks): runs start, the
// overlap policy follows them through the orchestrator, and the store
// records the last tick.
func TestCronThroughOrchestrator(t *testing.T) {
	t.Parallel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	o, err := batuta.New(batuta.Config{Logger: logger})
	require.NoError(t, err)
	var mu sync.Mutex
	var ids []string
	var times []time.Time
	require.NoError(t, o.Register(&batuta.Workflow{Name: "heartbeat", Tasks: []batuta.Task{{
		Name: "beat",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			mu.Lock()
			defer mu.Unlock()
			ids = append(ids, in.Event().ID)
			times = append(times, in.Event().Time)
			return nil, nil
		},
	}}}))
	trig, err := batuta.NewCron(batuta.CronConfig{Name: "heartbeat", Spec: "@every 100ms", Logger: logger})
	require.NoError(t, err)
	require.NoError(t, o.Bind("heartbeat", trig))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Error("Run did not return")
		}
	}()

	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ids) >= 3
	}, 10*time.Second, 5*time.Millisecond)

	mu.Lock()
	gotIDs, gotTimes := append([]string(nil), ids[:3]...), append([]time.Time(nil), times[:3]...)
	mu.Unlock()
	for i, id := range gotIDs {
		require.True(t, strings.HasPrefix(id, "cron/heartbeat/"), id)
		require.Equal(t, batuta.CronEventID("heartbeat", gotTimes[i]), id)
		require.True(t, gotTimes[i].Truncate(100*time.Millisecond).Equal(gotTimes[i]), "tick %s is off the 100ms grid", gotTimes[i])
		if i > 0 {
			require.True(t, gotTimes[i].After(gotTimes[i-1]))
		}
	}
	last, err := o.Store().LastTick(context.Background(), "heartbeat")
	require.NoError(t, err)
	require.False(t, last.Before(gotTimes[2]))
}

// TestCronAheadThroughOrchestrator: with CronConfig.Ahead, a tick's run
// exists before its tick, through the orchestrator and its store, and its
// task starts at the tick, not before (in-memory store, fake clock).
func TestCronAheadThroughOrchestrator(t *testing.T) {
	t.Parallel()
	begin := time.Date(2026, 3, 2, 10, 0, 0, 500_000_000, time.UTC)
	clock := batutatest.NewFakeClock(begin)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	o, err := batuta.New(batuta.Config{Logger: logger, Clock: clock})
	require.NoError(t, err)
	var mu sync.Mutex
	started := map[string]time.Time{}
	require.NoError(t, o.Register(&batuta.Workflow{Name: "beat", Tasks: []batuta.Task{{
		Name: "beat",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			mu.Lock()
			defer mu.Unlock()
			started[in.RunID()] = clock.Now()
			return nil, nil
		},
	}}}))
	trig, err := batuta.NewCron(batuta.CronConfig{Name: "beat", Spec: "0 * * * * *", Ahead: 200 * time.Millisecond, Logger: logger})
	require.NoError(t, err)
	require.NoError(t, o.Bind("beat", trig))
	start(t, o)
	tick := begin.Truncate(time.Minute).Add(time.Minute)
	// Step the clock toward the tick, short of it, until the run exists
	// (the lead is at most half the time from the trigger's start to the
	// tick, and the test does not know when it started: in large steps
	// first, so that it starts long before the tick).
	var run *batuta.Run
	require.Eventually(t, func() bool {
		rs, err := o.ListRuns(context.Background(), batuta.RunFilter{Workflow: "beat"})
		if err == nil && len(rs) > 0 {
			run = rs[0]
			return true
		}
		step := 5 * time.Millisecond
		if clock.Now().Before(tick.Add(-time.Second)) {
			step = 100 * time.Millisecond
		}
		if next := clock.Now().Add(step); next.Before(tick) {
			clock.Set(next)
		}
		return false
	}, 10*time.Second, 2*time.Millisecond, "no run created ahead of the tick")
	require.True(t, clock.Now().Before(tick))
	require.Equal(t, batuta.CronEventID("beat", tick), run.Event.ID)
	require.True(t, run.StartAt.Equal(tick), "StartAt %s, want the tick %s", run.StartAt, tick)
	require.True(t, run.CreatedAt.Before(tick))
	require.Equal(t, batuta.RunPending, run.State)
	mu.Lock()
	require.Empty(t, started, "the task started before its tick")
	mu.Unlock()
	clock.Set(tick)
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	r, err := o.Wait(wctx, run.ID)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	mu.Lock()
	require.Equal(t, tick, started[run.ID])
	mu.Unlock()
}
