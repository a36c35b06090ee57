package batuta

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestTaskCtxDoneAndCancelRace: Done and cancel called at once, in any
// order, always leave a Done channel that is closed, with the first cause
// kept (cancel closes done only when some Done call may have made it).
func TestTaskCtxDoneAndCancelRace(t *testing.T) {
	t.Parallel()
	parent := context.Background()
	for i := range 2000 {
		c := &taskCtx{parent: &parent}
		var wg sync.WaitGroup
		chans := make([]<-chan struct{}, 3)
		for k := range chans {
			wg.Go(func() { chans[k] = c.Done() })
		}
		causes := []error{errRunCanceled, errLeaseLost}
		if i%2 == 1 {
			causes[0], causes[1] = causes[1], causes[0]
		}
		for _, e := range causes {
			wg.Go(func() { c.cancel(e) })
		}
		wg.Wait()
		c.cancel(errAttemptDone) // what the executor does last; no effect now
		for _, ch := range append(chans, c.Done()) {
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: Done not closed after cancel", i)
			}
		}
		if cause := c.causeOf(); !errors.Is(cause, errRunCanceled) && !errors.Is(cause, errLeaseLost) {
			t.Fatalf("round %d: cause %v, want the first cancel's", i, cause)
		}
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatalf("round %d: Err %v", i, c.Err())
		}
	}
}

// TestTaskCtxLive: a context no one canceled reports nothing and reads
// values from its parent; cancel with an unknown cause panics.
func TestTaskCtxLive(t *testing.T) {
	t.Parallel()
	type key struct{}
	parent := context.WithValue(context.Background(), key{}, "v")
	c := &taskCtx{parent: &parent}
	if c.Err() != nil || c.causeOf() != nil || c.Value(key{}) != "v" {
		t.Fatalf("live ctx: err %v cause %v value %v", c.Err(), c.causeOf(), c.Value(key{}))
	}
	select {
	case <-c.Done():
		t.Fatal("Done closed before cancel")
	default:
	}
	defer func() {
		if recover() == nil {
			t.Fatal("cancel with an unknown cause did not panic")
		}
	}()
	c.cancel(errors.New("other"))
}
