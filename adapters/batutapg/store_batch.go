package batutapg

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// A combiner merges concurrent calls into batches, so that many goroutines
// each creating one run or completing a few tasks share one statement and
// one commit (group commit). It starts no goroutine: the first caller that
// finds a free flush slot becomes the flusher and executes queued calls,
// oldest first, until its own call is done; then it hands the slot to the
// oldest waiting caller (or frees it). At most maxFlush batches of one
// combiner run at once; a batch holds whole calls, up to maxBatch items (a
// single larger call is flushed alone). With spill set, a slot beyond the
// first is taken only by a call that finds at least spill items queued:
// a few calls wait for the busy slot and go together, a crowd gets a
// round trip of its own.
//
// A batch's statement runs under a context that ends only when every
// caller in it has given up, and carries the values of the first caller's.
// The results of a caller that gave up while its items were in flight go
// to abandoned (if set), which undoes what must not be left behind: a
// claim made for a caller that is gone would hold its task until the
// lease expires.
type combiner[I, O any] struct {
	maxBatch, maxFlush int
	spill              int
	flush              func(ctx context.Context, items []I) ([]O, error)
	abandoned          func(out []O)

	mu       sync.Mutex
	queue    []*call[I, O]
	queued   int // items in queue
	flushing int
}

type call[I, O any] struct {
	ctx   context.Context
	items []I
	out   []O
	err   error
	done  chan struct{}
	lead  chan struct{} // receives once when the flush slot is handed to this call

	// guarded by combiner.mu
	taken, finished, signaled, left bool
}

func newCombiner[I, O any](maxBatch, maxFlush int, flush func(context.Context, []I) ([]O, error)) *combiner[I, O] {
	return &combiner[I, O]{maxBatch: maxBatch, maxFlush: maxFlush, flush: flush}
}

// do submits items and waits for their results. If ctx ends before the
// items were picked up, nothing is executed; if it ends while they are in
// flight, do returns ctx.Err() and the items may or may not take effect.
func (b *combiner[I, O]) do(ctx context.Context, items []I) ([]O, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &call[I, O]{ctx: ctx, items: items, done: make(chan struct{}), lead: make(chan struct{}, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	b.queued += len(items)
	if b.flushing < b.maxFlush && (b.flushing == 0 || b.spill == 0 || b.queued >= b.spill) {
		b.flushing++
		b.mu.Unlock()
		b.leadLoop(c)
	} else {
		b.mu.Unlock()
		select {
		case <-c.done:
		case <-c.lead:
		case <-ctx.Done():
		}
		b.mu.Lock()
		if ctx.Err() != nil && !c.taken && !c.signaled {
			b.removeLocked(c)
			b.mu.Unlock()
			return nil, ctx.Err()
		}
		signaled := c.signaled
		b.mu.Unlock()
		if signaled {
			// The slot was handed to us: flush (or pass it on) even if our
			// own call was served meanwhile, or the queue would stall.
			b.leadLoop(c)
		}
	}
	select {
	case <-c.done:
		return c.out, c.err
	case <-ctx.Done():
	}
	b.mu.Lock()
	if c.finished { // answered meanwhile: the results are the caller's
		b.mu.Unlock()
		return c.out, c.err
	}
	c.left = true // exec hands the results to abandoned
	b.mu.Unlock()
	return nil, ctx.Err()
}

// waiting reports whether calls wait for a flush slot: a batch will go
// soon, which a call joining it rides along with.
func (b *combiner[I, O]) waiting() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue) > 0
}

func (b *combiner[I, O]) removeLocked(c *call[I, O]) {
	for i, q := range b.queue {
		if q == c {
			b.queue = append(b.queue[:i], b.queue[i+1:]...)
			b.queued -= len(c.items)
			return
		}
	}
}

// leadLoop flushes batches while c's own call is not done, then passes the
// slot on.
func (b *combiner[I, O]) leadLoop(c *call[I, O]) {
	for {
		b.mu.Lock()
		if c.finished || len(b.queue) == 0 {
			b.handOffLocked()
			b.mu.Unlock()
			return
		}
		n, size := 0, 0
		for n < len(b.queue) && (n == 0 || size+len(b.queue[n].items) <= b.maxBatch) {
			size += len(b.queue[n].items)
			b.queue[n].taken = true
			n++
		}
		b.queued -= size
		batch := append([]*call[I, O](nil), b.queue[:n]...)
		b.queue = append(b.queue[:0], b.queue[n:]...)
		b.mu.Unlock()
		b.exec(batch)
	}
}

// handOffLocked gives the flush slot to the oldest queued call that does
// not hold one yet, or frees it.
func (b *combiner[I, O]) handOffLocked() {
	for _, q := range b.queue {
		if !q.signaled {
			q.signaled = true
			q.lead <- struct{}{}
			return
		}
	}
	b.flushing--
}

func (b *combiner[I, O]) exec(batch []*call[I, O]) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(batch[0].ctx))
	var left atomic.Int32
	left.Store(int32(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, c := range batch {
		stops[i] = context.AfterFunc(c.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}()

	var items []I
	if len(batch) == 1 {
		items = batch[0].items
	} else {
		for _, c := range batch {
			items = append(items, c.items...)
		}
	}
	out, err := func() (out []O, err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("batutapg: panic in batch flush: %v", p)
			}
		}()
		return b.flush(ctx, items)
	}()
	if err == nil && len(out) != len(items) {
		err = fmt.Errorf("batutapg: batch flush returned %d results for %d items", len(out), len(items))
	}
	b.mu.Lock()
	off := 0
	var lost [][]O
	for _, c := range batch {
		if err != nil {
			c.err = err
		} else {
			c.out = out[off : off+len(c.items) : off+len(c.items)]
			if c.left && b.abandoned != nil {
				lost = append(lost, c.out)
			}
		}
		off += len(c.items)
		c.finished = true
		close(c.done)
	}
	b.mu.Unlock()
	for _, o := range lost {
		b.abandoned(o)
	}
}

// completionSpill is how many completions must wait for the busy flush
// slot before a second one starts (see Config.MaxCompletionFlushes).
const completionSpill = 256
