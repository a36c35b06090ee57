package batuta

import (
	"context"
	"errors"
	"sync"
	"time"
)

// An AckBatcher is a Queue that can settle several deliveries in one call
// (one round trip to the broker where it allows). The queue trigger looks
// for it: the acks that are ready at the same moment go out together.
type AckBatcher interface {
	// AckBatch acks every delivery of ds, as Ack would one by one. It
	// returns nil when every ack succeeded, else a slice as long as ds
	// whose i-th element is the error Ack would have returned for ds[i]
	// (nil for those that succeeded).
	AckBatch(ctx context.Context, ds []Delivery) []error
}

// ackPipe sends one receive loop's acks from a goroutine of its own, so
// that an ack's round trip overlaps with the handling of the next
// deliveries. The sender takes every ack queued at the moment it is free
// and sends them together (AckBatch when the Queue has it): a lone ack goes
// out at once, acks that arrive while a send is in flight share the next
// one; it never waits for a batch to fill.
type ackPipe struct {
	c   *queueConsumer
	ctx context.Context // the receive loop's; acks outlive its end (settleCtx)

	mu     sync.Mutex
	work   sync.Cond // signalled when an ack is queued or the pipe closes
	prog   sync.Cond // broadcast when acks were sent
	queue  []Delivery
	spare  []Delivery // the other buffer, reused
	queued int        // acks queued so far
	sent   int        // acks settled so far (successfully or not)
	closed bool
	done   chan struct{}
}

// newAckPipe starts the sender of one receive loop. Call close before the
// loop returns: it waits until every queued ack was sent.
func (c *queueConsumer) newAckPipe(ctx context.Context) *ackPipe {
	p := &ackPipe{c: c, ctx: ctx, done: make(chan struct{})}
	p.work.L = &p.mu
	p.prog.L = &p.mu
	go p.run()
	return p
}

// add queues d's ack.
func (p *ackPipe) add(d Delivery) {
	p.mu.Lock()
	p.queue = append(p.queue, d)
	p.queued++
	p.mu.Unlock()
	p.work.Signal()
}

// waitUnsent returns once at most n queued acks are unsent. Each send is
// bounded by SettleTimeout, so this wait is too.
func (p *ackPipe) waitUnsent(n int) {
	p.mu.Lock()
	for p.queued-p.sent > n {
		p.prog.Wait()
	}
	p.mu.Unlock()
}

// close sends what is queued and stops the sender.
func (p *ackPipe) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.work.Signal()
	<-p.done
}

func (p *ackPipe) run() {
	defer close(p.done)
	p.mu.Lock()
	for {
		for len(p.queue) == 0 && !p.closed {
			p.work.Wait()
		}
		if len(p.queue) == 0 {
			p.mu.Unlock()
			return
		}
		batch := p.queue
		p.queue = p.spare[:0]
		p.mu.Unlock()
		p.c.ackAll(p.ctx, batch)
		clear(batch) // drop the bodies
		p.mu.Lock()
		p.spare = batch[:0]
		p.sent += len(batch)
		p.prog.Broadcast()
	}
}

// ackAll acks ds, in one call when the Queue is an AckBatcher.
func (c *queueConsumer) ackAll(ctx context.Context, ds []Delivery) {
	ab, ok := c.cfg.Queue.(AckBatcher)
	if !ok || len(ds) == 1 {
		for _, d := range ds {
			c.ack(ctx, d)
		}
		return
	}
	sctx, cancel := c.settleCtx(ctx)
	defer cancel()
	errs := ab.AckBatch(sctx, ds)
	for i, err := range errs {
		if err != nil && i < len(ds) {
			c.ackFailed(ctx, ds[i], err)
		}
	}
}

// extender keeps the visibility of the deliveries a consumer holds while
// their runs go on (and while their dead-letter hand-off is retried): one
// goroutine for the whole trigger extends each of them every ExtendEvery,
// instead of a goroutine and a timer per delivery. A delivery is extended
// from ExtendEvery after it was added until it is removed, or until Extend
// says it is no longer held.
type extender struct {
	c     *queueConsumer
	ext   Extender
	every time.Duration

	mu    sync.Mutex
	items map[uint64]extItem
	next  uint64
	wake  chan struct{} // an item was added to an empty set
}

type extItem struct {
	d   Delivery
	due time.Time
}

// newExtender returns nil when the Queue is no Extender or extending is
// off.
func (c *queueConsumer) newExtender() *extender {
	ext, ok := c.cfg.Queue.(Extender)
	if !ok || c.cfg.ExtendEvery <= 0 {
		return nil
	}
	return &extender{c: c, ext: ext, every: c.cfg.ExtendEvery, items: make(map[uint64]extItem), wake: make(chan struct{}, 1)}
}

// add starts extending d and returns the key that stops it (remove). On a
// nil extender it does nothing.
func (e *extender) add(d Delivery) uint64 {
	if e == nil {
		return 0
	}
	due := e.c.cfg.Clock.Now().Add(e.every)
	e.mu.Lock()
	e.next++
	k := e.next
	e.items[k] = extItem{d: d, due: due}
	first := len(e.items) == 1
	e.mu.Unlock()
	if first {
		// The loop may be idle; when it waits on a timer instead, that
		// timer is due no later than this item (every item waits the same
		// ExtendEvery), and a stale token only costs it one more pass.
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}
	return k
}

// remove stops extending the delivery added under k.
func (e *extender) remove(k uint64) {
	if e == nil {
		return
	}
	e.mu.Lock()
	delete(e.items, k)
	e.mu.Unlock()
}

// run extends the due deliveries until ctx ends.
func (e *extender) run(ctx context.Context) {
	clock := e.c.cfg.Clock
	type dueItem struct {
		k uint64
		d Delivery
	}
	var due []dueItem
	for {
		e.mu.Lock()
		var first time.Time
		for _, it := range e.items {
			if first.IsZero() || it.due.Before(first) {
				first = it.due
			}
		}
		e.mu.Unlock()
		if first.IsZero() {
			select {
			case <-ctx.Done():
				return
			case <-e.wake:
				continue
			}
		}
		if wait := first.Sub(clock.Now()); wait > 0 {
			tm := clock.NewTimer(wait)
			select {
			case <-ctx.Done():
				tm.Stop()
				return
			case <-tm.C():
			}
		}
		now := clock.Now()
		due = due[:0]
		e.mu.Lock()
		for k, it := range e.items {
			if !it.due.After(now) {
				due = append(due, dueItem{k, it.d})
			}
		}
		e.mu.Unlock()
		for _, it := range due {
			if ctx.Err() != nil {
				return
			}
			err := e.ext.Extend(ctx, it.d)
			stop := err != nil && (errors.Is(err, ErrLeaseLost) || errors.Is(err, ErrClosed))
			e.mu.Lock()
			cur, held := e.items[it.k] // not removed (settled) meanwhile
			switch {
			case !held:
			case stop:
				delete(e.items, it.k) // no longer held: nothing to extend
			default:
				cur.due = now.Add(e.every)
				e.items[it.k] = cur
			}
			e.mu.Unlock()
			if err != nil && held && ctx.Err() == nil {
				e.c.cfg.Logger.WarnContext(ctx, "batuta: queue trigger: extending a delivery failed; it may be redelivered",
					"message", it.d.ID, "error", err)
			}
		}
		clear(due)
	}
}
