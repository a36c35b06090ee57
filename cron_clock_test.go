package batuta

import (
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// cronClock is a fake Clock for the cron tests: time moves only on Set or
// Advance, and timers fire when it reaches them. Tests wait (with a
// deadline) until the trigger is blocked on a timer before moving time.
type cronClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*cronTimer
}

type cronTimer struct {
	c     *cronClock
	at    time.Time
	ch    chan time.Time
	fired bool
}

func newCronClock(now time.Time) *cronClock { return &cronClock{now: now} }

func (c *cronClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *cronClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &cronTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.fired = true
		t.ch <- c.now
		return t
	}
	c.timers = append(c.timers, t)
	return t
}

func (t *cronTimer) C() <-chan time.Time { return t.ch }

func (t *cronTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	for i, x := range t.c.timers {
		if x == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			return true
		}
	}
	return false
}

// Set moves the time to now (never backwards) and fires due timers.
func (c *cronClock) Set(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.After(c.now) {
		c.now = now
	}
	sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
	keep := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			keep = append(keep, t)
			continue
		}
		t.fired = true
		t.ch <- c.now
	}
	c.timers = keep
}

func (c *cronClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// deadlines returns the fire times of the pending timers, earliest first.
func (c *cronClock) deadlines() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Time
	for _, t := range c.timers {
		out = append(out, t.at)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// waitTimer waits until a timer is pending and returns the earliest
// deadline.
func (c *cronClock) waitTimer(t *testing.T) time.Time {
	t.Helper()
	var at time.Time
	require.Eventually(t, func() bool {
		d := c.deadlines()
		if len(d) == 0 {
			return false
		}
		at = d[0]
		return true
	}, 5*time.Second, time.Millisecond, "the trigger never armed a timer")
	return at
}

// fireNext waits for the trigger to arm its timer, then moves the time to
// it. It returns the new time.
func (c *cronClock) fireNext(t *testing.T) time.Time {
	t.Helper()
	at := c.waitTimer(t)
	c.Set(at)
	return at
}
