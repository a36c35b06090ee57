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
// context whose cancel func was deferred. Values come from parent.
type taskCtx struct {
	parent context.Context
	// canceled is set, under mu, with cause (Err is then
	// context.Canceled): Err and causeOf of a live context (every call
	// made while the task runs) take no lock.
	canceled atomic.Bool
	mu       sync.Mutex
	done     chan struct{}
	cause    error
}

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
		if c.canceled.Load() {
			return closedChan
		}
		c.done = make(chan struct{})
	}
	return c.done
}

func (c *taskCtx) Err() error {
	if !c.canceled.Load() {
		return nil
	}
	return context.Canceled
}

func (c *taskCtx) Value(key any) any { return c.parent.Value(key) }

// cancel cancels the context with cause (first cause wins).
func (c *taskCtx) cancel(cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.canceled.Load() {
		return
	}
	c.cause = cause
	c.canceled.Store(true)
	if c.done != nil {
		close(c.done)
	}
}

// causeOf returns why the context was canceled (nil if it was not).
func (c *taskCtx) causeOf() error {
	if !c.canceled.Load() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
}

func (c *taskCtx) String() string { return "batuta.taskCtx" }
