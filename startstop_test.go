package batuta

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// loopService is a service whose run counts its launches and the runs going
// at once, and waits for its ctx like the executor's loops do.
type loopService struct {
	service
	launched  atomic.Int64
	active    atomic.Int64
	maxActive atomic.Int64
	lastCause atomic.Value // error
}

func newLoopService() *loopService {
	ls := &loopService{}
	ls.run = func(ctx context.Context) {
		ls.launched.Add(1)
		n := ls.active.Add(1)
		for {
			m := ls.maxActive.Load()
			if n <= m || ls.maxActive.CompareAndSwap(m, n) {
				break
			}
		}
		defer ls.active.Add(-1)
		<-ctx.Done()
		ls.lastCause.Store(context.Cause(ctx))
	}
	return ls
}

func TestServiceStopBeforeStart(t *testing.T) {
	ls := newLoopService()
	ls.stop() // returns at once: nothing to stop
	ls.stop()
	require.False(t, ls.running())
	require.Zero(t, ls.launched.Load())

	require.True(t, ls.start(context.Background()))
	require.True(t, ls.running())
	ls.stop()
	require.False(t, ls.running())
	require.Zero(t, ls.active.Load(), "stop returns only after run returned")
	require.ErrorIs(t, ls.lastCause.Load().(error), errServiceStopped)
}

func TestServiceStartTwiceStopTwice(t *testing.T) {
	ls := newLoopService()
	require.True(t, ls.start(context.Background()))
	require.False(t, ls.start(context.Background()), "a second start while running does nothing")
	ls.stop()
	ls.stop()
	require.Equal(t, int64(1), ls.launched.Load())
	require.Zero(t, ls.active.Load())

	// Stopped, it starts again.
	require.True(t, ls.start(context.Background()))
	ls.stop()
	require.Equal(t, int64(2), ls.launched.Load())
	require.Zero(t, ls.active.Load())
}

func TestServiceRestartsAfterReturningByItself(t *testing.T) {
	var launched atomic.Int64
	s := &service{run: func(context.Context) { launched.Add(1) }}
	require.True(t, s.start(context.Background()))
	s.stop() // waits for the run that returned by itself
	require.False(t, s.running())
	require.True(t, s.start(context.Background()))
	s.stop()
	require.Equal(t, int64(2), launched.Load())
}

func TestServiceParentCanceled(t *testing.T) {
	ls := newLoopService()
	ctx, cancel := context.WithCancelCause(context.Background())
	require.True(t, ls.start(ctx))
	parent := errors.New("parent gone")
	cancel(parent)
	ls.stop() // still waits for run, which returned through the parent
	require.Zero(t, ls.active.Load())
	require.ErrorIs(t, ls.lastCause.Load().(error), parent)
}

// TestServiceStartStopStress calls start and stop from many goroutines at
// once, with stops that come before any start and stops that follow
// stops. At no time do two runs go at once; once every caller has
// returned and a last stop returned, no run is left.
func TestServiceStartStopStress(t *testing.T) {
	ls := newLoopService()
	const goroutines, rounds = 32, 200
	var wg sync.WaitGroup
	var started atomic.Int64
	for g := range goroutines {
		wg.Go(func() {
			for i := range rounds {
				switch (g + i) % 4 {
				case 0:
					ls.stop()
				case 1:
					if ls.start(context.Background()) {
						started.Add(1)
					}
				case 2:
					if ls.start(context.Background()) {
						started.Add(1)
					}
					ls.stop()
				case 3:
					ls.stop()
					ls.stop()
				}
			}
		})
	}
	wg.Wait()
	ls.stop()
	require.False(t, ls.running())
	require.Zero(t, ls.active.Load(), "a run outlived the last stop")
	require.Equal(t, int64(1), ls.maxActive.Load(), "two runs went at once")
	require.Equal(t, started.Load(), ls.launched.Load(), "each successful start launched exactly one run")
	require.Positive(t, started.Load())
}

// TestStopServicesStopsAll checks the executor's way of stopping its
// services: all of them, stopped or not, and each run returned.
func TestStopServicesStopsAll(t *testing.T) {
	ss := make([]*loopService, 5)
	var all []*service
	for i := range ss {
		ss[i] = newLoopService()
		all = append(all, &ss[i].service)
		if i%2 == 0 {
			require.True(t, ss[i].start(context.Background()))
		}
	}
	stopServices(all)
	stopServices(all)
	for i, ls := range ss {
		require.False(t, ls.running(), "service %d", i)
		require.Zero(t, ls.active.Load(), "service %d", i)
	}
}
