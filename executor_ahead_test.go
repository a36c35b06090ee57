package batuta_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// aheadStore is a durable-looking memory store that counts the claims
// made with a clock ahead of the wall clock.
type aheadStore struct {
	durableStore
	early atomic.Int32 // ClaimTasks calls whose Now was ahead of time.Now
}

func (a *aheadStore) ClaimTasks(ctx context.Context, p batuta.ClaimParams) ([]batuta.Claim, error) {
	cs, err := a.Store.ClaimTasks(ctx, p)
	if len(cs) > 0 && p.Now.After(time.Now()) {
		a.early.Add(1)
	}
	return cs, err
}

// TestDelayedRunsClaimedAheadStartOnTime: with a durable store the
// dispatcher claims the tasks of a known due time shortly before it, and
// the workers start them at it, never before.
func TestDelayedRunsClaimedAheadStartOnTime(t *testing.T) {
	t.Parallel()
	st := &aheadStore{durableStore: durableStore{Store: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}}
	var mu sync.Mutex
	started := map[string]time.Time{}
	wf := &batuta.Workflow{Name: "later", Tasks: []batuta.Task{{Name: "a", Run: func(_ context.Context, in *batuta.Input) (any, error) {
		now := time.Now()
		mu.Lock()
		started[in.RunID()] = now
		mu.Unlock()
		return nil, nil
	}}}}
	o := setup(t, batuta.Config{Store: st, Workers: 4}, wf)
	ctx := waitCtx(t)
	var ids []string
	var starts []time.Time
	for i := range 6 {
		at := time.Now().Add(time.Duration(100+50*(i%3)) * time.Millisecond)
		id, err := o.Submit(ctx, "later", batuta.Event{}, batuta.StartAt(at))
		require.NoError(t, err)
		ids, starts = append(ids, id), append(starts, at)
	}
	for i, id := range ids {
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
		mu.Lock()
		s := started[id]
		mu.Unlock()
		require.False(t, s.Before(starts[i]), "run %d started %s before its StartAt", i, starts[i].Sub(s))
	}
	require.Positive(t, st.early.Load(), "no claim was made ahead of its due time")
}
