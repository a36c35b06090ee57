package batutapg

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// TestOnFailureOncePerFailureAcrossProcesses: Workflow.OnFailure runs
// once per failed run on a shared PostgreSQL store, though its handling
// is submitted several times: by the sweepers of two processes started
// after a process died between the failure and the submission, and, for a
// run failing while they run, by the process that recorded its end and by
// the sweepers. The store's deduplication by event ID keeps one handling
// run per failure.
func TestOnFailureOncePerFailureAcrossProcesses(t *testing.T) {
	pool := storeTestPool(t, 16)
	schema := "batuta_st_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema) // after every process stopped
	var mu sync.Mutex
	calls := map[string]int{}
	onFailure := func(_ context.Context, r *batuta.Run) error {
		mu.Lock()
		calls[r.ID]++
		mu.Unlock()
		return nil
	}
	workflow := func(withHandler bool) *batuta.Workflow {
		wf := &batuta.Workflow{Name: "charge", Tasks: []batuta.Task{{Name: "card", Run: func(context.Context, *batuta.Input) (any, error) {
			return nil, batuta.Permanent(errors.New("card declined"))
		}}}}
		if withHandler {
			wf.OnFailure = onFailure
		}
		return wf
	}
	process := func(withHandler bool) (*batuta.Orchestrator, func()) {
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		store, err := New(sctx, pool, Config{Schema: schema})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, store.Close()) })
		logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
		o, err := batuta.New(batuta.Config{Store: store, Logger: logger, NoLogHooks: true, PollInterval: 20 * time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, o.Register(workflow(withHandler)))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- o.Run(ctx) }()
		var once sync.Once
		stop := func() {
			once.Do(func() {
				cancel()
				require.NoError(t, <-done)
			})
		}
		t.Cleanup(stop)
		return o, stop
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A process without the handler: as if it died after the failure.
	first, stopFirst := process(false)
	lost, err := first.Submit(ctx, "charge", batuta.Event{ID: "order-1"})
	require.NoError(t, err)
	r, err := first.Wait(ctx, lost)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, r.State)
	stopFirst()

	a, _ := process(true)
	process(true)
	observed, err := a.Submit(ctx, "charge", batuta.Event{ID: "order-2"})
	require.NoError(t, err)

	// Wait until both failures were handled, then check that each was
	// handled by one run, called once.
	for {
		mu.Lock()
		n := len(calls)
		mu.Unlock()
		if n == 2 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d failures handled, want 2", n)
		case <-time.After(20 * time.Millisecond):
		}
	}
	hs, err := a.ListRuns(ctx, batuta.RunFilter{Workflow: batuta.FailureWorkflow("charge")})
	require.NoError(t, err)
	subjects := map[string]int{}
	for _, h := range hs {
		subjects[h.Event.Subject]++
		h, err := a.Wait(ctx, h.ID)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, h.State)
	}
	require.Equal(t, map[string]int{lost: 1, observed: 1}, subjects, "one handling run per failure")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, map[string]int{lost: 1, observed: 1}, calls)
}
