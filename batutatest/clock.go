package batutatest

import (
	"sort"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
)

// FakeClock is a batuta.Clock whose time moves only when the test says so
// (Advance, Set). Timers fire, in due order, when time reaches them. The
// zero value is not usable; use NewFakeClock. Safe for concurrent use.
type FakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	waiters []chan struct{}
}

// NewFakeClock returns a FakeClock set to now.
func NewFakeClock(now time.Time) *FakeClock { return &FakeClock{now: now} }

var _ batuta.Clock = (*FakeClock)(nil)

// Now returns the fake time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires when the fake time reaches now+d.
func (c *FakeClock) NewTimer(d time.Duration) batuta.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1), at: c.now.Add(d)}
	if d <= 0 {
		t.ch <- c.now
		t.fired = true
		return t
	}
	c.timers = append(c.timers, t)
	for _, w := range c.waiters {
		close(w)
	}
	c.waiters = nil
	return t
}

// Advance moves the time forward by d, firing due timers in order.
func (c *FakeClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// Set moves the time to t (never backwards), firing due timers in order.
func (c *FakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Before(c.now) {
		return
	}
	sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
	keep := c.timers[:0]
	for _, tm := range c.timers {
		if tm.stopped {
			continue
		}
		if !tm.at.After(t) {
			c.now = tm.at
			tm.fired = true
			tm.ch <- tm.at
			continue
		}
		keep = append(keep, tm)
	}
	for i := len(keep); i < len(c.timers); i++ {
		c.timers[i] = nil
	}
	c.timers = keep
	c.now = t
}

// Timers returns how many timers are waiting to fire.
func (c *FakeClock) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// WaitForTimers blocks until at least n timers are waiting or the deadline
// passes, and reports whether they are. Use it to know that the code under
// test is blocked on the clock before advancing it.
func (c *FakeClock) WaitForTimers(n int, deadline time.Duration) bool {
	end := time.Now().Add(deadline)
	for {
		c.mu.Lock()
		cnt := 0
		for _, t := range c.timers {
			if !t.stopped {
				cnt++
			}
		}
		if cnt >= n {
			c.mu.Unlock()
			return true
		}
		w := make(chan struct{})
		c.waiters = append(c.waiters, w)
		c.mu.Unlock()
		left := time.Until(end)
		if left <= 0 {
			return false
		}
		tm := time.NewTimer(left)
		select {
		case <-w:
			tm.Stop()
		case <-tm.C:
			return false
		}
	}
}

type fakeTimer struct {
	c       *FakeClock
	ch      chan time.Time
	at      time.Time
	fired   bool
	stopped bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.fired || t.stopped {
		return false
	}
	t.stopped = true
	return true
}
