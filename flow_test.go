package batuta_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// End-to-end tests of the flow controls with the in-memory store: no
// timing thresholds, only orderings and bounds that must hold.

// gate blocks task bodies until opened.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func newGate() *gate  { return &gate{ch: make(chan struct{})} }
func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

// highWater tracks how many of something are in progress at once.
type highWater struct {
	mu   sync.Mutex
	cur  map[string]int
	high map[string]int
}

func newHighWater() *highWater {
	return &highWater{cur: map[string]int{}, high: map[string]int{}}
}

func (h *highWater) enter(k string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cur[k]++
	h.high[k] = max(h.high[k], h.cur[k])
}

func (h *highWater) leave(k string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cur[k]--
}

func (h *highWater) max() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int{}
	for k, v := range h.high {
		out[k] = v
	}
	return out
}

func waitAll(t *testing.T, o *batuta.Orchestrator, ids []string) []*batuta.Run {
	t.Helper()
	ctx := waitCtx(t)
	out := make([]*batuta.Run, len(ids))
	for i, id := range ids {
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		out[i] = r
	}
	return out
}

// TestFlowPriorityOrder: with one worker busy, waiting runs start in
// priority order, highest first, equal priorities first come first served.
func TestFlowPriorityOrder(t *testing.T) {
	t.Parallel()
	g := newGate()
	var mu sync.Mutex
	var order []string
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
		if in.Event().ID == "gate" {
			<-g.ch
			return nil, nil
		}
		mu.Lock()
		order = append(order, in.Event().ID)
		mu.Unlock()
		return nil, nil
	}}}}
	o := setup(t, batuta.Config{Workers: 1}, wf)
	ctx := waitCtx(t)
	gid, err := o.Submit(ctx, "w", batuta.Event{ID: "gate"})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		r, err := o.GetRun(ctx, gid)
		return err == nil && r.State == batuta.RunRunning
	}, 10*time.Second, time.Millisecond)
	prios := []int{0, 5, -3, 10, 5, 0, 1, 10, -3, 2}
	var ids []string
	for i, p := range prios {
		id, err := o.Submit(ctx, "w", batuta.Event{ID: fmt.Sprintf("p%d-%d", p, i)}, batuta.WithPriority(p))
		require.NoError(t, err)
		ids = append(ids, id)
		r, err := o.GetRun(ctx, id)
		require.NoError(t, err)
		require.Equal(t, p, r.Priority)
	}
	g.open()
	waitAll(t, o, ids)
	type item struct{ p, i int }
	var want []item
	for i, p := range prios {
		want = append(want, item{p, i})
	}
	sort.SliceStable(want, func(a, b int) bool { return want[a].p > want[b].p })
	var wantIDs []string
	for _, w := range want {
		wantIDs = append(wantIDs, fmt.Sprintf("p%d-%d", w.p, w.i))
	}
	require.Equal(t, wantIDs, order)
}

// TestFlowDelayedStart: a delayed run exists at once (pending, StartAt
// shown), starts no task before its time, and can be canceled while it
// waits; a run delayed before Run started starts too.
func TestFlowDelayedStart(t *testing.T) {
	t.Parallel()
	started := make(chan time.Time, 10)
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
		started <- time.Now()
		return nil, nil
	}}}}
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, o.Register(wf))
	ctx := waitCtx(t)
	const delay = 300 * time.Millisecond
	// Submitted before Run: the executor learns of it from the store.
	before := time.Now()
	early, err := o.Submit(ctx, "w", batuta.Event{ID: "early"}, batuta.StartAfter(delay))
	require.NoError(t, err)
	start(t, o)

	submitted := time.Now()
	id, err := o.Submit(ctx, "w", batuta.Event{ID: "late"}, batuta.StartAfter(delay))
	require.NoError(t, err)
	canceled, err := o.Submit(ctx, "w", batuta.Event{ID: "canceled"}, batuta.StartAt(time.Now().Add(time.Hour)))
	require.NoError(t, err)
	r, err := o.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunPending, r.State)
	require.False(t, r.StartAt.Before(submitted.Add(delay)), "StartAt %v", r.StartAt)
	require.False(t, r.Task("a").NotBefore.IsZero(), "the root task shows its not-before")

	// Deduplicated by Event.ID like any run.
	again, err := o.Submit(ctx, "w", batuta.Event{ID: "late"}, batuta.StartAfter(time.Hour))
	require.NoError(t, err)
	require.Equal(t, id, again)

	require.NoError(t, o.Cancel(ctx, canceled))
	rc, err := o.Wait(ctx, canceled)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, rc.State)

	runs := waitAll(t, o, []string{early, id})
	for i, r := range runs {
		require.Equal(t, batuta.RunSucceeded, r.State)
		at := r.Task("a").Attempts[0].StartedAt
		ref := []time.Time{before, submitted}[i]
		require.False(t, at.Before(ref.Add(delay)), "run %s started %v before its time", r.Event.ID, ref.Add(delay).Sub(at))
		t.Logf("run %s: lateness %v", r.Event.ID, at.Sub(r.StartAt))
	}
	require.Len(t, started, 2)
}

// TestFlowPauseResume: a paused workflow starts no task (its runs are
// accepted and wait) while other workflows run; Resume starts them.
func TestFlowPauseResume(t *testing.T) {
	t.Parallel()
	var ran atomic.Int32
	body := func(ctx context.Context, in *batuta.Input) (any, error) {
		if in.Workflow() == "paused" {
			ran.Add(1)
		}
		return nil, nil
	}
	o := setup(t, batuta.Config{PollInterval: 20 * time.Millisecond},
		&batuta.Workflow{Name: "paused", Tasks: []batuta.Task{{Name: "a", Run: body}}},
		&batuta.Workflow{Name: "other", Tasks: []batuta.Task{{Name: "a", Run: body}}})
	ctx := waitCtx(t)
	require.NoError(t, o.Pause(ctx, "paused"))
	require.NoError(t, o.Pause(ctx, "paused"), "pausing twice is fine")
	ws, err := o.Paused(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"paused"}, ws)

	var ids []string
	for i := range 5 {
		id, err := o.Submit(ctx, "paused", batuta.Event{ID: fmt.Sprint(i)})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	// Runs of another workflow, submitted after, finish: the executor
	// claimed past the paused runs.
	for i := range 5 {
		id, err := o.Submit(ctx, "other", batuta.Event{ID: fmt.Sprint(i)})
		require.NoError(t, err)
		r, err := o.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	require.Zero(t, ran.Load(), "no task of a paused workflow starts")
	for _, id := range ids {
		r, err := o.GetRun(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunPending, r.State)
	}

	require.NoError(t, o.Resume(ctx, "paused"))
	ws, err = o.Paused(ctx)
	require.NoError(t, err)
	require.Empty(t, ws)
	for _, r := range waitAll(t, o, ids) {
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	require.EqualValues(t, 5, ran.Load())
}

// TestFlowCancelInProgress: a new run of a full key cancels the oldest
// unfinished one (its running task sees its ctx canceled, Wait returns);
// other keys are untouched.
func TestFlowCancelInProgress(t *testing.T) {
	t.Parallel()
	started := make(chan string, 10)
	wf := &batuta.Workflow{Name: "w",
		Concurrency: &batuta.Concurrency{Key: func(ev batuta.Event) string { return ev.Subject }, Max: 1, Strategy: batuta.ConcurrencyCancelInProgress},
		Tasks: []batuta.Task{{Name: "a", Retry: batuta.RetryPolicy{MaxAttempts: 1}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			started <- in.Event().ID
			if in.Event().ID == "new" {
				return "done", nil
			}
			<-ctx.Done()
			return nil, ctx.Err()
		}}}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	old, err := o.Submit(ctx, "w", batuta.Event{ID: "old", Subject: "k"})
	require.NoError(t, err)
	other, err := o.Submit(ctx, "w", batuta.Event{ID: "other", Subject: "k2"})
	require.NoError(t, err)
	got := []string{<-started, <-started}
	require.ElementsMatch(t, []string{"old", "other"}, got)
	r, err := o.GetRun(ctx, old)
	require.NoError(t, err)
	require.Equal(t, "w:k", r.ConcurrencyKey)

	nid, err := o.Submit(ctx, "w", batuta.Event{ID: "new", Subject: "k"})
	require.NoError(t, err)
	ro, err := o.Wait(ctx, old)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, ro.State)
	rn, err := o.Wait(ctx, nid)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, rn.State)
	rk2, err := o.GetRun(ctx, other)
	require.NoError(t, err)
	require.False(t, rk2.Finished(), "another key is untouched")
	require.NoError(t, o.Cancel(ctx, other))
}

// TestFlowCancelNewest: a new run over its key's limit is recorded
// canceled at once, with the reason; Wait returns it.
func TestFlowCancelNewest(t *testing.T) {
	t.Parallel()
	g := newGate()
	wf := &batuta.Workflow{Name: "w",
		Concurrency: &batuta.Concurrency{Max: 2, Strategy: batuta.ConcurrencyCancelNewest},
		Tasks: []batuta.Task{{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			<-g.ch
			return nil, nil
		}}}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	a, err := o.Submit(ctx, "w", batuta.Event{ID: "a"})
	require.NoError(t, err)
	b, err := o.Submit(ctx, "w", batuta.Event{ID: "b"})
	require.NoError(t, err)
	c, err := o.Submit(ctx, "w", batuta.Event{ID: "c"})
	require.NoError(t, err)
	rc, err := o.Wait(ctx, c)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, rc.State)
	require.NotEmpty(t, rc.Error)
	require.Empty(t, rc.Task("a").Attempts, "a rejected run never runs")
	g.open()
	for _, r := range waitAll(t, o, []string{a, b}) {
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	// Room again: a new run is admitted.
	d, err := o.Submit(ctx, "w", batuta.Event{ID: "d"})
	require.NoError(t, err)
	rd, err := o.Wait(ctx, d)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, rd.State)
}

// TestFlowWorkflowConcurrencyQueue: runs of a key never overlap beyond
// Max (counted from the first task's start to the last task's end), keys
// run side by side, and every run finishes.
func TestFlowWorkflowConcurrencyQueue(t *testing.T) {
	t.Parallel()
	hw := newHighWater()
	wf := &batuta.Workflow{Name: "w",
		Concurrency: &batuta.Concurrency{Key: func(ev batuta.Event) string { return ev.Subject }, Max: 2},
		Tasks: []batuta.Task{
			{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				hw.enter(in.Event().Subject)
				return nil, nil
			}},
			{Name: "b", Deps: []string{"a"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				time.Sleep(time.Millisecond) // work, not synchronisation
				hw.leave(in.Event().Subject)
				return nil, nil
			}},
		}}
	o := setup(t, batuta.Config{Workers: 16}, wf)
	ctx := waitCtx(t)
	var ids []string
	for i := range 60 {
		id, err := o.Submit(ctx, "w", batuta.Event{Subject: fmt.Sprintf("k%d", i%3)})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	for _, r := range waitAll(t, o, ids) {
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	for k, v := range hw.max() {
		require.LessOrEqual(t, v, 2, "key %s", k)
	}
	t.Logf("high-water marks per key (Max 2): %v", hw.max())
}

// TestFlowTaskConcurrency: attempts of a task with a limit never exceed
// Max per key; the limit holds across runs.
func TestFlowTaskConcurrency(t *testing.T) {
	t.Parallel()
	hw := newHighWater()
	var free atomic.Int32
	var freeHigh atomic.Int32
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{
		{Name: "limited", Concurrency: &batuta.Concurrency{Key: func(ev batuta.Event) string { return ev.Subject }, Max: 3},
			Run: func(ctx context.Context, in *batuta.Input) (any, error) {
				hw.enter(in.Event().Subject)
				defer hw.leave(in.Event().Subject)
				time.Sleep(time.Millisecond) // work, not synchronisation
				return nil, nil
			}},
		{Name: "free", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			n := free.Add(1)
			defer free.Add(-1)
			for m := freeHigh.Load(); n > m && !freeHigh.CompareAndSwap(m, n); m = freeHigh.Load() {
			}
			time.Sleep(time.Millisecond)
			return nil, nil
		}},
	}}
	o := setup(t, batuta.Config{Workers: 32}, wf)
	ctx := waitCtx(t)
	evs := make([]batuta.Event, 80)
	for i := range evs {
		evs[i] = batuta.Event{Subject: fmt.Sprintf("k%d", i%2)}
	}
	ids, err := o.SubmitMany(ctx, "w", evs)
	require.NoError(t, err)
	for _, r := range waitAll(t, o, ids) {
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	for k, v := range hw.max() {
		require.LessOrEqual(t, v, 3, "key %s", k)
	}
	t.Logf("task high-water marks per key (Max 3): %v; unlimited task: %d", hw.max(), freeHigh.Load())
}

// TestFlowDebounce: events of one key within the window make one run with
// the last event's data; another key gets its own run.
func TestFlowDebounce(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	wf := &batuta.Workflow{Name: "w",
		Debounce: &batuta.Debounce{Key: func(ev batuta.Event) string { return ev.Subject }, Window: 300 * time.Millisecond, MaxWait: time.Minute},
		Tasks: []batuta.Task{{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			mu.Lock()
			seen = append(seen, in.Event().Subject+"="+string(in.Event().Data))
			mu.Unlock()
			return nil, nil
		}}}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	var ids []string
	for i := range 5 {
		id, err := o.Submit(ctx, "w", batuta.Event{ID: fmt.Sprintf("e%d", i), Subject: "k", Data: []byte(fmt.Sprint(i))})
		require.NoError(t, err)
		ids = append(ids, id)
	}
	other, err := o.Submit(ctx, "w", batuta.Event{ID: "o", Subject: "k2", Data: []byte("x")})
	require.NoError(t, err)
	require.NotEqual(t, ids[0], other)
	for _, id := range ids[1:] {
		require.Equal(t, ids[0], id, "merged into the waiting run")
	}
	rs := waitAll(t, o, []string{ids[0], other})
	require.Equal(t, "e4", rs[0].Event.ID, "the run carries the last event")
	mu.Lock()
	defer mu.Unlock()
	require.ElementsMatch(t, []string{"k=4", "k2=x"}, seen)
}

// slotRecorder records the slots ReserveRate grants.
type slotRecorder struct {
	*batuta.MemoryStore
	mu    sync.Mutex
	slots []time.Time
}

func (s *slotRecorder) ReserveRate(ctx context.Context, spec batuta.RateSpec, now time.Time) (time.Time, error) {
	slot, err := s.MemoryStore.ReserveRate(ctx, spec, now)
	if err == nil {
		at := slot
		if at.Before(now) {
			at = now // "now": the attempt starts at once
		}
		s.mu.Lock()
		s.slots = append(s.slots, at)
		s.mu.Unlock()
	}
	return slot, err
}

// mostInWindow returns the most times in any half-open window of length w.
func mostInWindow(ts []time.Time, w time.Duration) int {
	ts = slices.Clone(ts)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	most := 0
	for i := range ts {
		n := 0
		for j := i; j < len(ts) && ts[j].Sub(ts[i]) < w; j++ {
			n++
		}
		most = max(most, n)
	}
	return most
}

// TestFlowRateLimit, across two workflows sharing a limit: the limiter
// grants at most Limit+Burst-1 start slots in any window of length Per;
// every attempt takes exactly one slot (a deferred task does not reserve
// again) and none starts before its slot (the i-th start is not earlier
// than the i-th slot); waiting spends no attempt. Starts may be later than
// their slots (all workers busy, a loaded machine), which the figures
// logged show.
func TestFlowRateLimit(t *testing.T) {
	t.Parallel()
	const limit, per, burst = 5, 200 * time.Millisecond, 2
	st := &slotRecorder{MemoryStore: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}
	rl := &batuta.RateLimit{Name: "api", Limit: limit, Per: per, Burst: burst}
	mk := func(name string) *batuta.Workflow {
		return &batuta.Workflow{Name: name, Tasks: []batuta.Task{{Name: "call", RateLimit: rl, Run: noop}}}
	}
	o := setup(t, batuta.Config{Store: st, Workers: 16}, mk("w1"), mk("w2"))
	ctx := waitCtx(t)
	var ids []string
	for i := range 12 {
		for _, wf := range []string{"w1", "w2"} {
			id, err := o.Submit(ctx, wf, batuta.Event{ID: fmt.Sprint(i)})
			require.NoError(t, err)
			ids = append(ids, id)
		}
	}
	var starts []time.Time
	for _, r := range waitAll(t, o, ids) {
		require.Equal(t, batuta.RunSucceeded, r.State)
		require.Len(t, r.Task("call").Attempts, 1, "waiting for the rate spends no attempt")
		starts = append(starts, r.Task("call").Attempts[0].StartedAt)
	}
	st.mu.Lock()
	slots := slices.Clone(st.slots)
	st.mu.Unlock()
	require.Len(t, slots, len(starts), "one reservation per start")
	granted := mostInWindow(slots, per)
	require.LessOrEqual(t, granted, limit+burst-1, "slots granted in a window of %v", per)
	slices.SortFunc(slots, func(a, b time.Time) int { return a.Compare(b) })
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	var lateness []time.Duration
	for i := range starts {
		require.False(t, starts[i].Before(slots[i]), "start %d at %v is before slot %v", i, starts[i], slots[i])
		lateness = append(lateness, starts[i].Sub(slots[i]))
	}
	slices.Sort(lateness)
	span := starts[len(starts)-1].Sub(starts[0])
	t.Logf("%d starts over %v (%.1f/s, limit %.1f/s): most slots in any %v %d (bound %d), most starts %d; start lateness p50 %v max %v",
		len(starts), span, float64(len(starts)-1)/span.Seconds(), float64(limit)/per.Seconds(), per,
		granted, limit+burst-1, mostInWindow(starts, per), lateness[len(lateness)/2], lateness[len(lateness)-1])
}

// failingRateStore fails its first ReserveRate calls.
type failingRateStore struct {
	*batuta.MemoryStore
	fails atomic.Int32
}

func (s *failingRateStore) ReserveRate(ctx context.Context, spec batuta.RateSpec, now time.Time) (time.Time, error) {
	if s.fails.Add(-1) >= 0 {
		return time.Time{}, errors.New("rate store down")
	}
	return s.MemoryStore.ReserveRate(ctx, spec, now)
}

// TestFlowRateLimitStoreError: a failing ReserveRate defers the task with
// backoff and never fails it or spends an attempt.
func TestFlowRateLimitStoreError(t *testing.T) {
	t.Parallel()
	st := &failingRateStore{MemoryStore: batuta.NewMemoryStore(batuta.MemoryStoreConfig{})}
	st.fails.Store(3)
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Retry: batuta.RetryPolicy{MaxAttempts: 1},
		RateLimit: &batuta.RateLimit{Name: "api", Limit: 100, Per: time.Second}, Run: noop}}}
	o := setup(t, batuta.Config{Store: st}, wf)
	ctx := waitCtx(t)
	id, err := o.Submit(ctx, "w", batuta.Event{})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.Len(t, r.Task("a").Attempts, 1)
	require.LessOrEqual(t, st.fails.Load(), int32(-1), "the store was asked again after failing")
}

// TestFlowSubmitMany: one call creates many runs, deduplicated by
// Event.ID, with the options applied to all.
func TestFlowSubmitMany(t *testing.T) {
	t.Parallel()
	o := setup(t, batuta.Config{}, &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}})
	ctx := waitCtx(t)
	first, err := o.Submit(ctx, "w", batuta.Event{ID: "dup"})
	require.NoError(t, err)
	evs := []batuta.Event{{ID: "x"}, {ID: "dup"}, {}, {ID: "y"}, {ID: "x"}}
	ids, err := o.SubmitMany(ctx, "w", evs, batuta.WithPriority(7), batuta.StartAfter(10*time.Millisecond))
	require.NoError(t, err)
	require.Len(t, ids, 5)
	require.Equal(t, first, ids[1])
	require.Equal(t, ids[0], ids[4], "a duplicate within the batch gets the first's run")
	for i, r := range waitAll(t, o, ids) {
		require.Equal(t, batuta.RunSucceeded, r.State)
		if i != 1 {
			require.Equal(t, 7, r.Priority, "run %d", i)
			require.False(t, r.StartAt.IsZero())
		}
	}
}

// BenchmarkDelayedRunLateness schedules 2,000 delayed runs spread over one
// second per iteration (memory store, system clock) and reports how late
// their first task started after its StartAt: p50, p99 and max, in
// microseconds. No threshold: a figure to watch (run with -benchtime 3x).
func BenchmarkDelayedRunLateness(b *testing.B) {
	const n, spread = 2000, time.Second
	o, err := batuta.New(batuta.Config{Logger: quiet, Workers: 64})
	if err != nil {
		b.Fatal(err)
	}
	if err := o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}}); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var late []time.Duration
	b.ResetTimer()
	for range b.N {
		base := time.Now().Add(100 * time.Millisecond)
		ids := make([]string, n)
		for i := range n {
			id, err := o.Submit(ctx, "w", batuta.Event{}, batuta.StartAt(base.Add(time.Duration(i)*spread/n)))
			if err != nil {
				b.Fatal(err)
			}
			ids[i] = id
		}
		for _, id := range ids {
			r, err := o.Wait(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			late = append(late, r.Task("a").Attempts[0].StartedAt.Sub(r.StartAt))
		}
	}
	b.StopTimer()
	slices.Sort(late)
	q := func(p float64) float64 { return float64(late[int(p*float64(len(late)-1))].Microseconds()) }
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(q(1), "max-µs")
	b.ReportMetric(float64(late[0].Microseconds()), "min-µs")
}

// TestFlowManyDelayedRuns: more delayed runs than the executor keeps due
// times for (4,096) all start, none before its time: past the bound the
// executor asks the store (NextDue) for the next due time.
func TestFlowManyDelayedRuns(t *testing.T) {
	t.Parallel()
	o := setup(t, batuta.Config{Workers: 64}, &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}}})
	ctx := waitCtx(t)
	const n = 5000
	base := time.Now().Add(2 * time.Second) // after the submits, even under -race
	var ids []string
	for i := range n {
		// The latest first, so the bounded heap holds the late ones and
		// the early ones come from the store.
		id, err := o.Submit(ctx, "w", batuta.Event{}, batuta.StartAt(base.Add(time.Duration(n-i)*100*time.Microsecond)))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	var late []time.Duration
	for _, r := range waitAll(t, o, ids) {
		at := r.Task("a").Attempts[0].StartedAt
		require.False(t, r.StartAt.IsZero(), "the submits took over 2s: raise base")
		require.False(t, at.Before(r.StartAt), "run started %v early", r.StartAt.Sub(at))
		late = append(late, at.Sub(r.StartAt))
	}
	slices.Sort(late)
	t.Logf("%d delayed runs: lateness p50 %v, p99 %v, max %v", n, late[n/2], late[n*99/100], late[n-1])
}

// TestFlowRateLimitKey: a keyed rate limit is one limit per key; a task
// over its key's limit waits (pending, NotBefore at its slot, no attempt);
// a key function that panics fails the task.
func TestFlowRateLimitKey(t *testing.T) {
	t.Parallel()
	wf := &batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "call", Run: noop, Retry: batuta.RetryPolicy{MaxAttempts: 1},
		RateLimit: &batuta.RateLimit{Name: "api", Limit: 1, Per: time.Hour, Key: func(in *batuta.Input) string {
			if in.Event().Subject == "boom" {
				panic("no tenant")
			}
			return in.Event().Subject
		}}}}}
	o := setup(t, batuta.Config{}, wf)
	ctx := waitCtx(t)
	a, err := o.Submit(ctx, "w", batuta.Event{Subject: "acme"})
	require.NoError(t, err)
	b, err := o.Submit(ctx, "w", batuta.Event{Subject: "globex"})
	require.NoError(t, err)
	for _, r := range waitAll(t, o, []string{a, b}) {
		require.Equal(t, batuta.RunSucceeded, r.State, "each key has its own limit")
	}
	submitted := time.Now()
	c, err := o.Submit(ctx, "w", batuta.Event{Subject: "acme"})
	require.NoError(t, err)
	var r *batuta.Run
	require.Eventually(t, func() bool {
		r, err = o.GetRun(ctx, c)
		require.NoError(t, err)
		return !r.Task("call").NotBefore.IsZero()
	}, 10*time.Second, time.Millisecond, "the task is deferred to its slot")
	require.Equal(t, batuta.TaskPending, r.Task("call").State)
	require.Empty(t, r.Task("call").Attempts)
	require.True(t, r.Task("call").NotBefore.After(submitted.Add(59*time.Minute)), "slot %v", r.Task("call").NotBefore)
	require.NoError(t, o.Cancel(ctx, c))

	d, err := o.Submit(ctx, "w", batuta.Event{Subject: "boom"})
	require.NoError(t, err)
	rd, err := o.Wait(ctx, d)
	require.NoError(t, err)
	require.Equal(t, batuta.RunFailed, rd.State)
	require.Contains(t, rd.Task("call").Error, "Task.RateLimit.Key of task call panicked")
}

// TestInvokeAsyncOptions: a function invoked asynchronously with
// StartAfter and WithPriority is delayed and prioritised like a Submit.
func TestInvokeAsyncOptions(t *testing.T) {
	t.Parallel()
	o, err := batuta.New(batuta.Config{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, batuta.RegisterFunc(o, batuta.FunctionConfig{Name: "f"}, func(_ context.Context, in string) (string, error) {
		return "hi " + in, nil
	}))
	start(t, o)
	ctx := waitCtx(t)
	submitted := time.Now()
	id, err := o.InvokeAsync(ctx, "f", "ann", batuta.StartAfter(50*time.Millisecond), batuta.WithPriority(3))
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.Equal(t, 3, r.Priority)
	require.False(t, r.Tasks[0].Attempts[0].StartedAt.Before(submitted.Add(50*time.Millisecond)))
}

// BenchmarkSubmitMany compares creating runs one Submit at a time with
// SubmitMany batches of 1,000 (memory store, nothing executing): runs/s.
func BenchmarkSubmitMany(b *testing.B) {
	for _, batch := range []int{1, 1000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			o, err := batuta.New(batuta.Config{Logger: quiet, MaxInFlightRuns: -1})
			if err != nil {
				b.Fatal(err)
			}
			if err := o.Register(&batuta.Workflow{Name: "w", Tasks: []batuta.Task{{Name: "a", Run: noop}, {Name: "b", Deps: []string{"a"}, Run: noop}}}); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			evs := make([]batuta.Event, batch)
			b.ResetTimer()
			for i := 0; i < b.N; i += batch {
				if batch == 1 {
					if _, err := o.Submit(ctx, "w", batuta.Event{}); err != nil {
						b.Fatal(err)
					}
					continue
				}
				if _, err := o.SubmitMany(ctx, "w", evs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "runs/s")
		})
	}
}

// TestFlowQuietKeysNotBehindNoisyOne: with Max 1 per key, a key with a
// backlog of waiting runs (its running one blocked) does not hold back
// other keys: their runs start and finish meanwhile.
func TestFlowQuietKeysNotBehindNoisyOne(t *testing.T) {
	t.Parallel()
	g := newGate()
	hw := newHighWater()
	wf := &batuta.Workflow{Name: "w",
		Concurrency: &batuta.Concurrency{Key: func(ev batuta.Event) string { return ev.Subject }, Max: 1},
		Tasks: []batuta.Task{{Name: "a", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			hw.enter(in.Event().Subject)
			defer hw.leave(in.Event().Subject)
			if in.Event().Subject == "noisy" {
				<-g.ch
			}
			return nil, nil
		}}}}
	o := setup(t, batuta.Config{Workers: 8}, wf)
	ctx := waitCtx(t)
	evs := make([]batuta.Event, 200)
	for i := range evs {
		evs[i] = batuta.Event{Subject: "noisy"}
	}
	noisy, err := o.SubmitMany(ctx, "w", evs)
	require.NoError(t, err)
	var quiet []string
	for k := range 20 {
		id, err := o.Submit(ctx, "w", batuta.Event{Subject: fmt.Sprintf("quiet-%d", k)})
		require.NoError(t, err)
		quiet = append(quiet, id)
	}
	for _, r := range waitAll(t, o, quiet) {
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	g.open()
	for _, r := range waitAll(t, o, noisy) {
		require.Equal(t, batuta.RunSucceeded, r.State)
	}
	require.Equal(t, 1, hw.max()["noisy"])
}
