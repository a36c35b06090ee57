package batuta_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
	"github.com/stretchr/testify/require"
)

// aheadStore is a durable-looking memory store that counts the tasks
// claimed with a clock ahead of the orchestrator's.
type aheadStore struct {
	durableStore
	clock batuta.Clock
	early atomic.Int32 // tasks claimed with a Now after the clock's
}

func (a *aheadStore) ClaimTasks(ctx context.Context, p batuta.ClaimParams) ([]batuta.Claim, error) {
	cs, err := a.Store.ClaimTasks(ctx, p)
	if p.Now.After(a.clock.Now()) {
		a.early.Add(int32(len(cs)))
	}
	return cs, err
}

// TestDelayedRunsClaimedAheadStartOnTime: with a durable store the
// dispatcher claims the tasks of a known due time shortly before it, and
// the workers start them at it, never before (fake clock: the test moves
// time to 10 ms before the start, sees the tasks claimed and not started,
// then to the start).
func TestDelayedRunsClaimedAheadStartOnTime(t *testing.T) {
	t.Parallel()
	begin := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	clock := batutatest.NewFakeClock(begin)
	st := &aheadStore{durableStore: durableStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}, clock: clock}
	var mu sync.Mutex
	started := map[string]time.Time{}
	wf := &batuta.Workflow{Name: "later", Tasks: []batuta.Task{{Name: "a", Run: func(_ context.Context, in *batuta.Input) (any, error) {
		mu.Lock()
		started[in.RunID()] = clock.Now()
		mu.Unlock()
		return nil, nil
	}}}}
	o := setup(t, batuta.Config{Store: st, Workers: 4, Clock: clock}, wf)
	ctx := waitCtx(t)
	at := begin.Add(time.Second)
	var ids []string
	for range 3 {
		id, err := o.Submit(ctx, "later", batuta.Event{}, batuta.StartAt(at))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	clock.Set(at.Add(-10 * time.Millisecond))
	require.Eventually(t, func() bool { return st.early.Load() == 3 }, 10*time.Second, time.Millisecond,
		"the dispatcher did not claim the three tasks ahead of their time (claimed %d)", st.early.Load())
	for _, id := range ids {
		r, err := o.GetRun(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.TaskRunning, r.Task("a").State, "claimed ahead")
	}
	mu.Lock()
	require.Empty(t, started, "a task started before its time")
	mu.Unlock()
	clock.Set(at)
	for _, id := range ids {
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
		mu.Lock()
		s := started[id]
		mu.Unlock()
		require.Equal(t, at, s, "run %s started at its StartAt", id)
	}
}
