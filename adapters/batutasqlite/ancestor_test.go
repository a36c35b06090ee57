package batutasqlite

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// TestOutputFromAncestorDurable: a task reads the outputs of ancestors that
// are not its direct dependencies through the SQLite store, where outputs
// are JSON; a skipped ancestor has no output and a non-ancestor is refused.
func TestOutputFromAncestorDurable(t *testing.T) {
	t.Parallel()
	store, _ := openTemp(t)
	o, err := batuta.New(batuta.Config{Store: store, Logger: quietLogger(), PollInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	type order struct {
		ID    int      `json:"id"`
		Items []string `json:"items"`
	}
	var mu sync.Mutex
	errs := map[string]error{}
	noop := func(context.Context, *batuta.Input) (any, error) { return nil, nil }
	require.NoError(t, o.Register(&batuta.Workflow{Name: "order", Tasks: []batuta.Task{
		{Name: "validate", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			return batuta.EventData[order](in)
		}},
		{Name: "audit", Deps: []string{"validate"}, When: batuta.OneFailed, Run: noop}, // skipped
		{Name: "reserve", Deps: []string{"validate"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			return 3, nil
		}},
		{Name: "charge", Deps: []string{"reserve", "audit"}, When: batuta.AllDone, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			n, err := batuta.Output[int](in, "reserve")
			return n * 10, err
		}},
		{Name: "email", Deps: []string{"charge"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			o, err := batuta.Output[order](in, "validate") // three levels up, decoded from JSON
			if err != nil {
				return nil, err
			}
			c, err := batuta.Output[int](in, "charge")
			if err != nil {
				return nil, err
			}
			_, skipped := batuta.Output[any](in, "audit")
			_, ghost := batuta.Output[any](in, "ghost")
			mu.Lock()
			errs["audit"], errs["ghost"] = skipped, ghost
			mu.Unlock()
			return map[string]any{"id": o.ID, "items": len(o.Items), "charged": c}, nil
		}},
	}}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(runCtx) }()
	defer func() {
		stop()
		require.NoError(t, <-done)
	}()

	id, err := o.Submit(ctx, "order", batuta.Event{Data: []byte(`{"id":7,"items":["a","b"]}`)})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State, r.Error)
	out, err := batuta.OutputAs[map[string]int](r.Task("email").Output)
	require.NoError(t, err)
	require.Equal(t, map[string]int{"id": 7, "items": 2, "charged": 30}, out)

	mu.Lock()
	defer mu.Unlock()
	require.ErrorIs(t, errs["audit"], batuta.ErrNoOutput)
	require.ErrorContains(t, errs["audit"], `output of "audit": task skipped`)
	require.ErrorIs(t, errs["ghost"], batuta.ErrNotAncestor)
	require.ErrorContains(t, errs["ghost"], `task "email" can read "validate", "audit", "reserve", "charge"`)
}
