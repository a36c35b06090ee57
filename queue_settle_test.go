package batuta_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

// gatedRuns is a Runs whose runs finish when the test says so: Fire
// returns the event ID as the run ID, Wait blocks until finish(id).
type gatedRuns struct {
	clock   batuta.Clock
	mu      sync.Mutex
	done    map[string]chan struct{}
	waiting map[string]bool // runs someone waited for
}

func newGatedRuns(clock batuta.Clock) *gatedRuns {
	return &gatedRuns{clock: clock, done: map[string]chan struct{}{}, waiting: map[string]bool{}}
}

func (g *gatedRuns) ch(id string) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch := g.done[id]
	if ch == nil {
		ch = make(chan struct{})
		g.done[id] = ch
	}
	return ch
}

func (g *gatedRuns) finish(id string) { close(g.ch(id)) }

func (g *gatedRuns) waited(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting[id]
}

func (g *gatedRuns) Workflow() string { return "wf" }
func (g *gatedRuns) Fire(_ context.Context, ev batuta.Event) (string, error) {
	g.ch(ev.ID)
	return ev.ID, nil
}
func (g *gatedRuns) Get(context.Context, string) (*batuta.Run, error) {
	return nil, batuta.ErrRunNotFound
}
func (g *gatedRuns) Wait(ctx context.Context, id string) (*batuta.Run, error) {
	g.mu.Lock()
	g.waiting[id] = true
	g.mu.Unlock()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-g.ch(id):
		return &batuta.Run{ID: id, State: batuta.RunSucceeded}, nil
	}
}
func (g *gatedRuns) Cancel(context.Context, string) error { return nil }
func (g *gatedRuns) Durable() bool                        { return true }
func (g *gatedRuns) Clock() batuta.Clock                  { return g.clock }
func (g *gatedRuns) LastTick(context.Context, string) (time.Time, error) {
	return time.Time{}, nil
}
func (g *gatedRuns) RecordTick(context.Context, string, time.Time) (bool, error) {
	return false, nil
}

// extendCounter counts Extend calls per message ID.
type extendCounter struct {
	*batuta.MemoryQueue
	mu       sync.Mutex
	extended map[string]int
}

func (e *extendCounter) Extend(ctx context.Context, d batuta.Delivery) error {
	e.mu.Lock()
	e.extended[d.ID]++
	e.mu.Unlock()
	return e.MemoryQueue.Extend(ctx, d)
}

func (e *extendCounter) counts(ids ...string) []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = e.extended[id]
	}
	return out
}

// TestQueueTriggerExtendsEveryWaitingDelivery: waiting for runs to finish,
// the trigger extends every delivery of the batch every ExtendEvery (those
// whose turn to be awaited has not come yet too), and stops extending one
// once its run finished and it was acked.
func TestQueueTriggerExtendsEveryWaitingDelivery(t *testing.T) {
	t.Parallel()
	clock := batutatest.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	q := &extendCounter{MemoryQueue: newQueue(t, batuta.MemoryQueueConfig{VisibilityTimeout: time.Hour}), extended: map[string]int{}}
	ctx := testCtx(t)
	for _, id := range []string{"a", "b", "c"} {
		require.NoError(t, q.Publish(ctx, batuta.Message{ID: id}))
	}
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: q, ReceiveMax: 3, Ack: batuta.AckOnFinish, ExtendEvery: 10 * time.Second, Clock: clock,
		DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil }),
	})
	require.NoError(t, err)
	runs := newGatedRuns(clock)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- trig.RunTracking(rctx, runs) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()

	// The trigger waits for a's run once it fired all three.
	require.Eventually(t, func() bool { return runs.waited("a") }, 10*time.Second, time.Millisecond)
	require.True(t, clock.WaitForTimers(1, 10*time.Second), "the extender set no timer")
	clock.Advance(10 * time.Second)
	require.Eventually(t, func() bool { c := q.counts("a", "b", "c"); return c[0] == 1 && c[1] == 1 && c[2] == 1 },
		10*time.Second, time.Millisecond, "every waiting delivery is extended")

	runs.finish("a")
	require.Eventually(t, func() bool { return q.InFlight() == 2 }, 10*time.Second, time.Millisecond, "a is acked")
	require.True(t, clock.WaitForTimers(1, 10*time.Second), "the extender set no timer for its next pass")
	clock.Advance(10 * time.Second)
	require.Eventually(t, func() bool { c := q.counts("b", "c"); return c[0] == 2 && c[1] == 2 },
		10*time.Second, time.Millisecond, "the deliveries still waiting are extended again")
	require.Equal(t, []int{1}, q.counts("a"), "a settled delivery is not extended any more")

	runs.finish("b")
	runs.finish("c")
	require.Eventually(t, func() bool { return q.InFlight() == 0 && q.Len() == 0 }, 10*time.Second, time.Millisecond)
}

// gatedAcker is a queue whose first settling call (Ack or AckBatch) waits
// until released; it records how many deliveries each call settled.
type gatedAcker struct {
	*batuta.MemoryQueue
	release chan struct{}
	first   atomic.Bool
	mu      sync.Mutex
	calls   []int
}

func (g *gatedAcker) gate() {
	if g.first.CompareAndSwap(false, true) {
		<-g.release
	}
}

// record notes a call that settled n deliveries.
func (g *gatedAcker) record(n int) {
	g.mu.Lock()
	g.calls = append(g.calls, n)
	g.mu.Unlock()
}

func (g *gatedAcker) Ack(ctx context.Context, d batuta.Delivery) error {
	g.gate()
	err := g.MemoryQueue.Ack(ctx, d)
	g.record(1)
	return err
}

func (g *gatedAcker) AckBatch(ctx context.Context, ds []batuta.Delivery) []error {
	g.gate()
	var errs []error
	for i, d := range ds {
		if err := g.MemoryQueue.Ack(ctx, d); err != nil {
			if errs == nil {
				errs = make([]error, len(ds))
			}
			errs[i] = err
		}
	}
	g.record(len(ds))
	return errs
}

func (g *gatedAcker) settled() (calls, acked int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, n := range g.calls {
		acked += n
	}
	return len(g.calls), acked
}

// TestQueueTriggerBatchesAcks: a receive loop does not wait for its acks
// (it fires every delivery it received while the first ack is held up),
// and the acks that piled up meanwhile go out together in one AckBatch.
func TestQueueTriggerBatchesAcks(t *testing.T) {
	t.Parallel()
	q := &gatedAcker{MemoryQueue: newQueue(t, batuta.MemoryQueueConfig{VisibilityTimeout: time.Hour}), release: make(chan struct{})}
	ctx := testCtx(t)
	const n = 5
	publishN(t, q, n, "m")
	trig, err := batuta.NewQueueTrigger(batuta.QueueTriggerConfig{
		Queue: q, ReceiveMax: n,
		DeadLetter: batuta.DeadLetterFunc(func(context.Context, batuta.DeadLetter) error { return nil }),
	})
	require.NoError(t, err)
	var fired atomic.Int32
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- trig.Run(rctx, func(context.Context, batuta.Event) error { fired.Add(1); return nil })
	}()
	require.Eventually(t, func() bool { return fired.Load() == n }, 10*time.Second, time.Millisecond,
		"the receive loop fires on while an ack is in flight")
	close(q.release)
	require.Eventually(t, func() bool { _, acked := q.settled(); return acked == n }, 10*time.Second, time.Millisecond)
	calls, _ := q.settled()
	require.LessOrEqual(t, calls, 2, "the acks queued behind the first one share one call")
	require.Zero(t, q.Len())
	require.Zero(t, q.InFlight())
	cancel()
	require.NoError(t, <-done)
}
