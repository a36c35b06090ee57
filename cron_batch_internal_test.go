package batuta

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// batchStore is a MemoryStore that says it is durable and counts the
// create calls; CreateRuns fails with failBatch, and CreateRun fails for
// events named "bad".
type batchStore struct {
	*MemoryStore
	batches, singles atomic.Int32
	sizes            chan int
	failBatch        error
}

func (s *batchStore) Durable() bool { return true }

func (s *batchStore) CreateRuns(ctx context.Context, runs []NewRun) ([]CreateResult, error) {
	s.batches.Add(1)
	if s.sizes != nil {
		s.sizes <- len(runs)
	}
	if s.failBatch != nil {
		return nil, s.failBatch
	}
	return s.MemoryStore.CreateRuns(ctx, runs)
}

func (s *batchStore) CreateRun(ctx context.Context, nr NewRun) (string, bool, error) {
	s.singles.Add(1)
	if nr.Event.ID == "bad" {
		return "", false, errors.New("refused: bad")
	}
	return s.MemoryStore.CreateRun(ctx, nr)
}

func newBatchOrch(t *testing.T, st Store) *Orchestrator {
	t.Helper()
	o, err := New(Config{Store: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	require.NoError(t, o.Register(&Workflow{Name: "wf", Tasks: []Task{{Name: "a", Run: func(context.Context, *Input) (any, error) { return nil, nil }}}}))
	return o
}

// fireAll takes n tickets for instant at, then fires them concurrently
// through the batcher; it returns each fire's ID and error.
func fireAll(t *testing.T, o *Orchestrator, at time.Time, names []string, ctxs []context.Context) ([]string, []error) {
	t.Helper()
	tickets := make([]*fireTicket, len(names))
	for i := range names {
		tickets[i] = o.fireBatch.expect(at, false, 0)
	}
	ids := make([]string, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			if ctxs != nil && ctxs[i] != nil {
				ctx = ctxs[i]
			}
			v := &runsView{o: o, workflow: "wf"}
			ids[i], errs[i] = v.fireBatched(ctx, tickets[i], Event{ID: name, Time: at})
		}()
	}
	wg.Wait()
	return ids, errs
}

// TestFireBatcherOneCallPerInstant: fires of one instant whose tickets were
// all taken become one CreateRuns call; each gets its own run.
func TestFireBatcherOneCallPerInstant(t *testing.T) {
	st := &batchStore{MemoryStore: NewMemoryStore(MemoryStoreConfig{}), sizes: make(chan int, 10)}
	o := newBatchOrch(t, st)
	o.fireBatch.linger = time.Hour // only the last ticket triggers the flush
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	names := make([]string, 50)
	for i := range names {
		names[i] = fmt.Sprintf("e%02d", i)
	}
	ids, errs := fireAll(t, o, at, names, nil)
	require.Equal(t, int32(1), st.batches.Load())
	require.Equal(t, 50, <-st.sizes)
	require.Equal(t, int32(0), st.singles.Load())
	seen := map[string]bool{}
	for i := range names {
		require.NoError(t, errs[i])
		r, err := o.GetRun(context.Background(), ids[i])
		require.NoError(t, err)
		require.Equal(t, names[i], r.Event.ID, "each fire gets its own run")
		require.False(t, seen[ids[i]])
		seen[ids[i]] = true
	}
	// The same instant again: duplicates answer with the existing runs.
	ids2, errs2 := fireAll(t, o, at, names, nil)
	for i := range names {
		require.NoError(t, errs2[i])
		require.Equal(t, ids[i], ids2[i])
	}
	o.fireBatch.mu.Lock()
	require.Empty(t, o.fireBatch.groups, "no group left behind")
	o.fireBatch.mu.Unlock()
}

// TestFireBatcherErrorsPerItem: when CreateRuns fails, each fire is tried
// alone and gets its own answer.
func TestFireBatcherErrorsPerItem(t *testing.T) {
	st := &batchStore{MemoryStore: NewMemoryStore(MemoryStoreConfig{}), failBatch: fmt.Errorf("wrapped: %w", ErrBusy)}
	o := newBatchOrch(t, st)
	o.fireBatch.linger = time.Hour
	at := time.Date(2030, 1, 1, 0, 0, 5, 0, time.UTC)
	ids, errs := fireAll(t, o, at, []string{"good1", "bad", "good2"}, nil)
	require.Equal(t, int32(1), st.batches.Load())
	require.Equal(t, int32(3), st.singles.Load())
	require.NoError(t, errs[0])
	require.ErrorContains(t, errs[1], "refused: bad")
	require.Empty(t, ids[1])
	require.NoError(t, errs[2])
	for _, i := range []int{0, 2} {
		_, err := o.GetRun(context.Background(), ids[i])
		require.NoError(t, err)
	}
}

// TestFireBatcherCancel: a fire whose ctx ends returns ctx.Err() without
// holding up the others: a canceled leader lets the group go at once, and
// a ticket given back unused (a dropped tick) counts as arrived.
func TestFireBatcherCancel(t *testing.T) {
	st := &batchStore{MemoryStore: NewMemoryStore(MemoryStoreConfig{})}
	o := newBatchOrch(t, st)
	o.fireBatch.linger = time.Hour
	at := time.Date(2030, 1, 1, 0, 0, 10, 0, time.UTC)
	v := &runsView{o: o, workflow: "wf"}

	// Already canceled: nothing is recorded, the ticket is given back.
	dead, cancel := context.WithCancel(context.Background())
	cancel()
	tk := o.fireBatch.expect(at, false, 0)
	_, err := v.fireBatched(dead, tk, Event{ID: "dead", Time: at})
	require.ErrorIs(t, err, context.Canceled)
	_, err = o.store.FindRun(context.Background(), "wf", "dead")
	require.ErrorIs(t, err, ErrRunNotFound)

	// A leader waiting for an outstanding ticket, canceled.
	other := o.fireBatch.expect(at, false, 0)
	lctx, lcancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		_, err := v.fireBatched(lctx, o.fireBatch.expect(at, false, 0), Event{ID: "leader", Time: at})
		res <- err
	}()
	require.Eventually(t, func() bool {
		o.fireBatch.mu.Lock()
		defer o.fireBatch.mu.Unlock()
		g := o.fireBatch.groups[fireKey{at: at.UnixNano()}]
		return g != nil && len(g.items) == 1
	}, 10*time.Second, time.Millisecond)
	lcancel()
	require.ErrorIs(t, <-res, context.Canceled)
	// The outstanding ticket's fire comes late: recorded on its own.
	id, err := v.fireBatched(context.Background(), other, Event{ID: "late", Time: at})
	require.NoError(t, err)
	_, err = o.GetRun(context.Background(), id)
	require.NoError(t, err)

	// A released ticket counts as arrived: the group goes without it.
	t1, t2 := o.fireBatch.expect(at.Add(time.Second), false, 0), o.fireBatch.expect(at.Add(time.Second), false, 0)
	done := make(chan error, 1)
	go func() {
		_, err := v.fireBatched(context.Background(), t1, Event{ID: "kept", Time: at.Add(time.Second)})
		done <- err
	}()
	t2.release()
	t2.release() // idempotent
	require.NoError(t, <-done)
	o.fireBatch.mu.Lock()
	require.Empty(t, o.fireBatch.groups)
	o.fireBatch.mu.Unlock()
}

// TestPreferredPeer: every instance picks the same peer for a tick, the
// picks spread over the peers, and a peer leaving moves only its own ticks.
func TestPreferredPeer(t *testing.T) {
	peers := []string{"a", "b", "c"}
	count := map[string]int{}
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 300; i++ {
		tick := base.Add(time.Duration(i) * 5 * time.Second)
		p := preferredPeer(peers, "s", tick)
		require.Equal(t, p, preferredPeer([]string{"c", "a", "b"}, "s", tick), "order of the list does not matter")
		count[p]++
		if p != "b" {
			require.Equal(t, p, preferredPeer([]string{"a", "c"}, "s", tick), "b leaving moves only b's ticks")
		}
	}
	for _, p := range peers {
		require.Greater(t, count[p], 50, "peer %s gets a share", p)
	}
}
