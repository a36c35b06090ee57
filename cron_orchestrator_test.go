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

// TestCronAheadThroughOrchestrator: with CronConfig.Ahead, each tick's run
// exists before its tick and its task starts no earlier than the tick
// (in-memory store, system clock, 300ms ticks created 100ms ahead).
func TestCronAheadThroughOrchestrator(t *testing.T) {
	t.Parallel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	o, err := batuta.New(batuta.Config{Logger: logger})
	require.NoError(t, err)
	type start struct {
		runID      string
		tick, when time.Time
	}
	var mu sync.Mutex
	var starts []start
	require.NoError(t, o.Register(&batuta.Workflow{Name: "beat", Tasks: []batuta.Task{{
		Name: "beat",
		Run: func(_ context.Context, in *batuta.Input) (any, error) {
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			starts = append(starts, start{in.RunID(), in.Event().Time, now})
			return nil, nil
		},
	}}}))
	trig, err := batuta.NewCron(batuta.CronConfig{Name: "beat", Spec: "@every 300ms", Ahead: 100 * time.Millisecond, Logger: logger})
	require.NoError(t, err)
	require.NoError(t, o.Bind("beat", trig))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(starts) >= 3
	}, 10*time.Second, 5*time.Millisecond)
	mu.Lock()
	got := append([]start(nil), starts[:3]...)
	mu.Unlock()
	ahead := 0
	for _, s := range got {
		require.False(t, s.when.Before(s.tick), "run %s started at %s, before its tick %s", s.runID, s.when, s.tick)
		r, err := o.GetRun(context.Background(), s.runID)
		require.NoError(t, err)
		if r.CreatedAt.Before(s.tick) {
			ahead++
		}
	}
	// The first tick may come less than two leads after the start (the
	// lead is then at most half of that); the later ones are created ahead.
	require.GreaterOrEqual(t, ahead, 2, "runs created before their ticks")
}
