package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// clock notes, for every run of a round, when it was submitted and when
// each of its steps started and ended (unix nanoseconds), and closes done
// once every run's last step has ended.
type clock struct {
	steps  int
	submit []atomic.Int64
	start  []atomic.Int64 // run*steps + step
	end    []atomic.Int64
	left   atomic.Int64
	done   chan struct{}
	once   sync.Once
	// last is when the last step of the last run to finish ended.
	last atomic.Int64
}

func newClock(runs, steps int) *clock {
	c := &clock{
		steps:  steps,
		submit: make([]atomic.Int64, runs),
		start:  make([]atomic.Int64, runs*steps),
		end:    make([]atomic.Int64, runs*steps),
		done:   make(chan struct{}),
	}
	c.left.Store(int64(runs))
	return c
}

// step notes that step k (from 0) of run i ran now. A step run twice
// (a retry, a recovery) keeps its first start and its last end.
func (c *clock) step(i, k int) {
	if i < 0 || i >= len(c.submit) || k < 0 || k >= c.steps {
		return
	}
	now := time.Now().UnixNano()
	c.start[i*c.steps+k].CompareAndSwap(0, now)
	if c.end[i*c.steps+k].Swap(now) == 0 && k == c.steps-1 {
		c.last.Store(now)
		if c.left.Add(-1) == 0 {
			c.once.Do(func() { close(c.done) })
		}
	}
}

// wait waits for every run to end, up to limit.
func (c *clock) wait(ctx context.Context, limit time.Duration) bool {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-c.done:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// summary returns, over the runs after the first tenth (warm-up), the step
// boundaries (end of step k to start of step k+1), submit to first step
// start, and submit to last step end.
func (c *clock) summary() (gaps, first, whole []time.Duration) {
	n := len(c.submit)
	for i := n / 10; i < n; i++ {
		sub := c.submit[i].Load()
		base := i * c.steps
		if sub == 0 || c.end[base+c.steps-1].Load() == 0 {
			continue
		}
		first = append(first, time.Duration(c.start[base].Load()-sub))
		whole = append(whole, time.Duration(c.end[base+c.steps-1].Load()-sub))
		for k := 1; k < c.steps; k++ {
			gaps = append(gaps, time.Duration(c.start[base+k].Load()-c.end[base+k-1].Load()))
		}
	}
	return gaps, first, whole
}

// openLoop calls submit(i) total times at rate per second on a fixed
// schedule, each in its own goroutine (a slow submit does not delay the
// next), noting the submit time first.
func (c *clock) openLoop(ctx context.Context, rate int, submit func(i int) error) error {
	interval := time.Second / time.Duration(rate)
	begin := time.Now()
	var wg sync.WaitGroup
	var first atomic.Value
	for i := range c.submit {
		if wait := time.Until(begin.Add(time.Duration(i) * interval)); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				wg.Wait()
				return ctx.Err()
			}
		}
		c.submit[i].Store(time.Now().UnixNano())
		wg.Go(func() {
			if err := submit(i); err != nil {
				first.CompareAndSwap(nil, err)
			}
		})
	}
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		return err
	}
	return nil
}
