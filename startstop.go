package batuta

import (
	"context"
	"errors"
	"sync"
)

// errServiceStopped is the cause of a background service's ctx when its
// stop is called.
var errServiceStopped = errors.New("batuta: background service stopped")

// service is the start/stop contract of the executor's background services
// (heartbeat, rescuer, pruner, completers). run is the service's loop: it
// returns when its ctx is done (or earlier, when it has nothing to do).
//
//   - start launches run in a goroutine and returns at once. While run is
//     going, start does nothing and reports false; once run has returned
//     (stopped, or done by itself), start launches it again.
//   - stop cancels run's ctx with errServiceStopped and returns only after
//     run has returned. stop before start, and stop after stop, return at
//     once.
//   - start and stop may be called from any number of goroutines at once.
//
// It plays the part of River's rivershared/startstop, cut down to what the
// executor needs.
type service struct {
	run func(ctx context.Context)

	mu     sync.Mutex
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when run returns; nil before start and after stop
}

// start launches the service with a ctx derived from ctx, unless it is
// running. It reports whether it launched it.
func (s *service) start(ctx context.Context) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done != nil {
		select {
		case <-s.done: // run returned by itself: start afresh
		default:
			return false
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	s.cancel, s.done = cancel, done
	go func() {
		defer close(done)
		s.run(ctx)
	}()
	return true
}

// stop stops the service and waits for its run to return.
func (s *service) stop() {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	if done == nil {
		return
	}
	cancel(errServiceStopped)
	<-done
	s.mu.Lock()
	if s.done == done { // not started again meanwhile
		s.cancel, s.done = nil, nil
	}
	s.mu.Unlock()
}

// running reports whether run is going.
func (s *service) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// stopServices stops every service at once and waits for them all.
func stopServices(ss []*service) {
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(s.stop)
	}
	wg.Wait()
}
