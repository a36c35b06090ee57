package batuta

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// taskCtx is the context a task attempt receives when it has no deadline.
// It costs one small allocation where context.WithCancelCause costs more:
// its Done channel is made only if the task asks for it, which most short
// tasks never do. It is canceled with a cause (shutdown, run canceled, lease
// lost) by the executor, and always when the attempt returns, like a
// context whose cancel func was deferred. Values come from *parent.
//
// It is 32 bytes (workers allocate one per attempt, in chunks): the
// parent by pointer, the cause as an index into ctxCauses.
type taskCtx struct {
	parent *context.Context
	mu     sync.Mutex
	// cause is set once, by a swap, to the cause's index in ctxCauses
	// + 1 (Err is then context.Canceled): Err and causeOf take no lock.
	cause atomic.Uint32
	// hasDone is set (under mu, before cause is read) by the first
	// Done call: cancel takes mu to close done only then, so an attempt
	// that never asked for Done ends without taking a lock.
	hasDone atomic.Bool
	done    chan struct{}
}

// ctxCauses are the causes a taskCtx is canceled with.
var ctxCauses = [...]error{errAttemptDone, errShutdown, errRunCanceled, errLeaseLost}

var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

func (c *taskCtx) Deadline() (time.Time, bool) { return time.Time{}, false }

func (c *taskCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.hasDone.Store(true) // before cause is read: see cancel
		if c.cause.Load() != 0 {
			return closedChan
		}
		c.done = make(chan struct{})
	}
	return c.done
}

func (c *taskCtx) Err() error {
	if c.cause.Load() == 0 {
		return nil
	}
	return context.Canceled
}

func (c *taskCtx) Value(key any) any { return (*c.parent).Value(key) }

// cancel cancels the context with cause, one of ctxCauses (first cause
// wins).
func (c *taskCtx) cancel(cause error) {
	i := 0
	for i < len(ctxCauses) && ctxCauses[i] != cause { //nolint:errorlint // the sentinels themselves, never wrapped
		i++
	}
	if i == len(ctxCauses) {
		panic("batuta: taskCtx canceled with an unknown cause: " + cause.Error())
	}
	if !c.cause.CompareAndSwap(0, uint32(i)+1) {
		return
	}
	// A Done call that set hasDone after this load read cause after the
	// swap above, and returned closedChan without making done.
	if !c.hasDone.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		close(c.done)
	}
}

// causeOf returns why the context was canceled (nil if it was not).
func (c *taskCtx) causeOf() error {
	if i := c.cause.Load(); i != 0 {
		return ctxCauses[i-1] // set once, never changed
	}
	return nil
}

func (c *taskCtx) String() string { return "batuta.taskCtx" }
