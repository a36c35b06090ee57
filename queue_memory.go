package batuta

import (
	"cmp"
	"container/heap"
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
)

// MemoryQueueConfig configures NewMemoryQueue. The zero value is ready to
// use.
type MemoryQueueConfig struct {
	// Capacity bounds the messages the queue holds (ready, delayed and in
	// flight together). Publish blocks while the queue is full, until a
	// message is acked, ctx ends or the handle is closed. Default 10,000.
	Capacity int
	// VisibilityTimeout is how long a delivered message that is neither
	// acked nor nacked stays invisible; then it is delivered again, with
	// its Attempt incremented. Default 30 s.
	VisibilityTimeout time.Duration
	// MaxBodyBytes caps Message.Body; Publish refuses a bigger body with a
	// *PayloadTooLargeError. Default 1 MiB.
	MaxBodyBytes int
	// Clock tells the time for publish times, delays and visibility
	// timeouts. Default SystemClock.
	Clock Clock
}

// Defaults of MemoryQueueConfig.
const (
	DefaultMemoryQueueCapacity  = 10_000
	DefaultVisibilityTimeout    = 30 * time.Second
	DefaultMemoryQueueBodyLimit = 1 << 20
)

func (c MemoryQueueConfig) withDefaults() MemoryQueueConfig {
	if c.Capacity == 0 {
		c.Capacity = DefaultMemoryQueueCapacity
	}
	if c.VisibilityTimeout == 0 {
		c.VisibilityTimeout = DefaultVisibilityTimeout
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMemoryQueueBodyLimit
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	return c
}

func (c MemoryQueueConfig) validate() error {
	switch {
	case c.Capacity < 0:
		return &ConfigError{Field: "Capacity", Reason: "must not be negative"}
	case c.VisibilityTimeout < 0:
		return &ConfigError{Field: "VisibilityTimeout", Reason: "must not be negative"}
	case c.MaxBodyBytes < 0:
		return &ConfigError{Field: "MaxBodyBytes", Reason: "must not be negative"}
	}
	return nil
}

// A MemoryQueue is the in-memory Queue: bounded, at-least-once, with
// redelivery on Nack (after the requested delay) and after the visibility
// timeout for deliveries that are neither acked nor nacked. Messages are
// delivered in publish order, except that a redelivered message joins the
// back of the line. It is good for tests and for single-process use; its
// messages live only as long as the process.
//
// A MemoryQueue value is a handle on the queue, like a connection to a
// broker: Connect returns another handle on the same messages, and Close
// closes one handle only (its pending Receive calls return ErrClosed and its
// unsettled deliveries become available to other handles at once). A
// delivery may be settled through any open handle.
//
// It needs no goroutine of its own: due redeliveries are found by Receive.
// All methods are safe for concurrent use.
type MemoryQueue struct {
	b      *memBroker
	mu     sync.Mutex // guards closed (read under b.mu too, see closeHandle)
	closed bool
	done   chan struct{}
	held   map[*memEntry]struct{} // deliveries held by this handle, guarded by b.mu
}

// NewMemoryQueue returns a handle on a new, empty in-memory queue.
func NewMemoryQueue(cfg MemoryQueueConfig) (*MemoryQueue, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	b := &memBroker{cfg: cfg, changed: make(chan struct{})}
	return b.newHandle(), nil
}

// Connect returns another handle on the same queue, as a second process's
// connection would be. Connecting through a closed handle works: the queue
// outlives its handles.
func (q *MemoryQueue) Connect() *MemoryQueue { return q.b.newHandle() }

// Len returns the number of messages in the queue that were not acked yet
// (ready, waiting for a nack delay, or in flight).
func (q *MemoryQueue) Len() int {
	q.b.mu.Lock()
	defer q.b.mu.Unlock()
	return q.b.count
}

// InFlight returns the number of deliveries currently held by consumers
// (received, neither settled nor timed out).
func (q *MemoryQueue) InFlight() int {
	q.b.mu.Lock()
	defer q.b.mu.Unlock()
	q.b.promote(q.b.cfg.Clock.Now())
	return q.b.inflight
}

// Publish adds msg to the queue. It assigns a UUIDv7 ID if msg.ID is empty
// and the clock's now if msg.Time is zero; Body and Headers are copied. It
// blocks while the queue is at capacity, and returns ctx's error if ctx ends
// first (wrapped together with ErrBusy), ErrClosed if the handle is closed,
// and a *PayloadTooLargeError for a body over MaxBodyBytes.
func (q *MemoryQueue) Publish(ctx context.Context, msg Message) error {
	b := q.b
	if len(msg.Body) > b.cfg.MaxBodyBytes {
		return &PayloadTooLargeError{What: "message body", Size: len(msg.Body), Limit: b.cfg.MaxBodyBytes}
	}
	if msg.ID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("batuta: memory queue: message id: %w", err)
		}
		msg.ID = id.String()
	}
	if msg.Time.IsZero() {
		msg.Time = b.cfg.Clock.Now()
	}
	msg.Body = cloneBytes(msg.Body)
	msg.Headers = maps.Clone(msg.Headers)
	for {
		b.mu.Lock()
		if q.isClosed() {
			b.mu.Unlock()
			return fmt.Errorf("batuta: memory queue: publish: %w", ErrClosed)
		}
		if b.count < b.cfg.Capacity {
			b.seq++
			e := &memEntry{msg: msg, seq: b.seq}
			b.count++
			b.pushReady(e)
			b.signal()
			b.mu.Unlock()
			return nil
		}
		wake := b.changed
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("batuta: memory queue: publish: queue full: %w: %w", ErrBusy, ctx.Err())
		case <-q.done:
		case <-wake:
		}
	}
}

// Receive blocks until at least one message is ready, ctx ends or the handle
// is closed, and returns up to max deliveries (max < 1 counts as 1). Each
// delivery is held for VisibilityTimeout. On cancel it returns ctx.Err(); on
// a closed handle, ErrClosed.
func (q *MemoryQueue) Receive(ctx context.Context, max int) ([]Delivery, error) {
	if max < 1 {
		max = 1
	}
	b := q.b
	for {
		b.mu.Lock()
		if q.isClosed() {
			b.mu.Unlock()
			return nil, fmt.Errorf("batuta: memory queue: receive: %w", ErrClosed)
		}
		if err := ctx.Err(); err != nil {
			b.mu.Unlock()
			return nil, err
		}
		now := b.cfg.Clock.Now()
		b.promote(now)
		if len(b.ready)-b.head > 0 {
			n := min(max, len(b.ready)-b.head)
			out := make([]Delivery, n)
			for i := range out {
				e := b.popReady()
				b.tokens++
				e.token = b.tokens
				e.deliveries++
				e.state = memInFlight
				e.owner = q
				e.at = now.Add(b.cfg.VisibilityTimeout)
				heap.Push(&b.expiries, e)
				q.held[e] = struct{}{}
				b.inflight++
				m := e.msg
				m.Body = cloneBytes(m.Body)
				m.Headers = maps.Clone(m.Headers)
				out[i] = Delivery{Message: m, Attempt: e.deliveries, Receipt: memReceipt{e: e, token: e.token}}
			}
			b.mu.Unlock()
			return out, nil
		}
		wake := b.changed
		// The timer is armed under the lock, on the clock read under it: a
		// (fake) clock advanced right after the unlock would otherwise arm
		// it that much late, and a receive could sleep past a due message.
		var timerC <-chan time.Time
		var timer Timer
		if next, ok := b.nextDue(); ok {
			timer = b.cfg.Clock.NewTimer(next.Sub(now))
			timerC = timer.C()
		}
		b.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-q.done:
		case <-wake:
		case <-timerC:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// Ack removes the delivered message from the queue for good. It fails with
// ErrLeaseLost if the delivery is no longer held (its visibility timeout
// expired or its handle was closed, so the message may have been delivered
// again), and with ErrClosed through a closed handle.
func (q *MemoryQueue) Ack(ctx context.Context, d Delivery) error {
	if _, err := q.settle(d, "ack"); err != nil {
		return err
	}
	b := q.b
	b.count--
	b.signal()
	b.mu.Unlock()
	return nil
}

// Nack returns the delivered message to the queue, ready again after delay
// (0: at once); its next delivery has Attempt incremented. Errors as for Ack.
func (q *MemoryQueue) Nack(ctx context.Context, d Delivery, delay time.Duration) error {
	e, err := q.settle(d, "nack")
	if err != nil {
		return err
	}
	b := q.b
	if delay <= 0 {
		b.pushReady(e)
	} else {
		e.state = memDelayed
		e.at = b.cfg.Clock.Now().Add(delay)
		heap.Push(&b.delayed, e)
	}
	b.signal()
	b.mu.Unlock()
	return nil
}

var _ Extender = (*MemoryQueue)(nil)

// Extend restarts the visibility timeout of a delivery this handle still
// holds. ErrLeaseLost if it is no longer held, ErrClosed after Close.
func (q *MemoryQueue) Extend(ctx context.Context, d Delivery) error {
	r, ok := d.Receipt.(memReceipt)
	if !ok || r.e == nil {
		return fmt.Errorf("batuta: memory queue: extend: delivery %q has no memory queue receipt", d.ID)
	}
	b := q.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if q.isClosed() {
		return fmt.Errorf("batuta: memory queue: extend: %w", ErrClosed)
	}
	now := b.cfg.Clock.Now()
	b.promote(now)
	e := r.e
	if e.state != memInFlight || e.token != r.token {
		return fmt.Errorf("batuta: memory queue: extend message %q: delivery no longer held: %w", d.ID, ErrLeaseLost)
	}
	e.at = now.Add(b.cfg.VisibilityTimeout)
	heap.Fix(&b.expiries, e.idx)
	b.signal()
	return nil
}

// settle checks that d is held and takes it out of flight. On success it
// returns with b.mu held.
func (q *MemoryQueue) settle(d Delivery, op string) (*memEntry, error) {
	r, ok := d.Receipt.(memReceipt)
	if !ok || r.e == nil {
		return nil, fmt.Errorf("batuta: memory queue: %s: delivery %q has no memory queue receipt", op, d.ID)
	}
	b := q.b
	b.mu.Lock()
	if q.isClosed() {
		b.mu.Unlock()
		return nil, fmt.Errorf("batuta: memory queue: %s: %w", op, ErrClosed)
	}
	b.promote(b.cfg.Clock.Now())
	e := r.e
	if e.state != memInFlight || e.token != r.token {
		b.mu.Unlock()
		return nil, fmt.Errorf("batuta: memory queue: %s message %q: delivery no longer held: %w", op, d.ID, ErrLeaseLost)
	}
	b.unhold(e)
	e.state = memGone
	return e, nil
}

// Close closes this handle: its pending Receive and Publish calls return
// ErrClosed, and the deliveries it holds are ready again at once for other
// handles (counted as delivered). The queue and its messages stay. Closing
// twice is a no-op.
func (q *MemoryQueue) Close() error {
	b := q.b
	b.mu.Lock()
	defer b.mu.Unlock()
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.done)
	q.mu.Unlock()
	for e := range q.held {
		b.unhold(e)
		b.pushReady(e)
	}
	b.signal()
	return nil
}

func (q *MemoryQueue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

// memBroker is the queue shared by handles.
type memBroker struct {
	cfg MemoryQueueConfig

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change
	seq      uint64
	tokens   uint64
	count    int // messages not acked
	inflight int
	ready    []*memEntry // FIFO from head
	head     int
	delayed  memHeap // nacked with a delay, by due time
	expiries memHeap // in-flight deliveries, by visibility deadline
}

func (b *memBroker) newHandle() *MemoryQueue {
	return &MemoryQueue{b: b, done: make(chan struct{}), held: make(map[*memEntry]struct{})}
}

// signal wakes every waiter. Called with b.mu held.
func (b *memBroker) signal() {
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *memBroker) pushReady(e *memEntry) {
	e.state = memReady
	e.owner = nil
	b.ready = append(b.ready, e)
}

func (b *memBroker) popReady() *memEntry {
	e := b.ready[b.head]
	b.ready[b.head] = nil
	b.head++
	if b.head == len(b.ready) {
		b.ready, b.head = b.ready[:0], 0
	} else if b.head >= 1024 && b.head*2 >= len(b.ready) {
		n := copy(b.ready, b.ready[b.head:])
		clear(b.ready[n:])
		b.ready, b.head = b.ready[:n], 0
	}
	return e
}

// unhold takes an in-flight entry away from its owner and out of the
// expiry heap.
func (b *memBroker) unhold(e *memEntry) {
	heap.Remove(&b.expiries, e.idx)
	if e.owner != nil {
		delete(e.owner.held, e)
	}
	e.owner = nil
	e.token = 0
	b.inflight--
}

// promote makes due delayed messages and expired deliveries ready.
func (b *memBroker) promote(now time.Time) {
	for len(b.delayed) > 0 && !b.delayed[0].at.After(now) {
		b.pushReady(heap.Pop(&b.delayed).(*memEntry))
	}
	for len(b.expiries) > 0 && !b.expiries[0].at.After(now) {
		e := b.expiries[0]
		b.unhold(e)
		b.pushReady(e)
	}
}

// nextDue returns when the next delayed message or visibility timeout is
// due.
func (b *memBroker) nextDue() (time.Time, bool) {
	switch {
	case len(b.delayed) == 0 && len(b.expiries) == 0:
		return time.Time{}, false
	case len(b.delayed) == 0:
		return b.expiries[0].at, true
	case len(b.expiries) == 0 || b.delayed[0].at.Before(b.expiries[0].at):
		return b.delayed[0].at, true
	default:
		return b.expiries[0].at, true
	}
}

type memState uint8

const (
	memReady memState = iota
	memDelayed
	memInFlight
	memGone
)

type memEntry struct {
	msg        Message
	seq        uint64
	deliveries int
	state      memState
	token      uint64       // current delivery, while in flight
	owner      *MemoryQueue // handle holding it, while in flight
	at         time.Time    // due time (delayed) or visibility deadline (in flight)
	idx        int          // index in the heap holding it
}

type memReceipt struct {
	e     *memEntry
	token uint64
}

// memHeap orders entries by at, then publish order. Indexed, so settled
// deliveries leave the expiry heap at once.
type memHeap []*memEntry

func (h memHeap) Len() int { return len(h) }
func (h memHeap) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].seq < h[j].seq
	}
	return h[i].at.Before(h[j].at)
}
func (h memHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}
func (h *memHeap) Push(x any) {
	e := x.(*memEntry)
	e.idx = len(*h)
	*h = append(*h, e)
}
func (h *memHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	e.idx = -1
	return e
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

var _ Queue = (*MemoryQueue)(nil)

var _ BrowsableQueue = (*MemoryQueue)(nil)

// entriesLocked returns the messages not acked, by publish order. Called
// with b.mu held.
func (b *memBroker) entriesLocked() []*memEntry {
	out := make([]*memEntry, 0, b.count)
	out = append(out, b.ready[b.head:]...)
	out = append(out, b.delayed...)
	out = append(out, b.expiries...)
	slices.SortFunc(out, func(x, y *memEntry) int { return cmp.Compare(x.seq, y.seq) })
	return out
}

func memQueueKey(k string) (uint64, error) {
	n, err := strconv.ParseUint(k, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is not a memory queue key (a decimal sequence number)", ErrBadDeadLetterID, k)
	}
	return n, nil
}

func queued(e *memEntry) QueuedMessage {
	m := e.msg
	m.Body = cloneBytes(m.Body)
	m.Headers = maps.Clone(m.Headers)
	return QueuedMessage{Key: strconv.FormatUint(e.seq, 10), Message: m}
}

// Browse lists up to limit messages (limit < 1 counts as 1) whose key
// (their publish sequence number, in decimal) is after after, oldest
// first, whatever their state (ready, delayed, in flight).
func (q *MemoryQueue) Browse(ctx context.Context, after string, limit int) ([]QueuedMessage, error) {
	var from uint64
	if after != "" {
		var err error
		if from, err = memQueueKey(after); err != nil {
			return nil, err
		}
	}
	limit = max(limit, 1)
	b := q.b
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []QueuedMessage
	for _, e := range b.entriesLocked() {
		if e.seq > from {
			out = append(out, queued(e))
			if len(out) == limit {
				break
			}
		}
	}
	return out, nil
}

// Lookup returns the messages with these keys still in the queue.
func (q *MemoryQueue) Lookup(ctx context.Context, keys ...string) ([]QueuedMessage, error) {
	want, err := memKeys(keys)
	if err != nil {
		return nil, err
	}
	b := q.b
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []QueuedMessage
	for _, e := range b.entriesLocked() {
		if want[e.seq] {
			out = append(out, queued(e))
		}
	}
	return out, nil
}

func memKeys(keys []string) (map[uint64]bool, error) {
	want := make(map[uint64]bool, len(keys))
	for _, k := range keys {
		n, err := memQueueKey(k)
		if err != nil {
			return nil, err
		}
		want[n] = true
	}
	return want, nil
}

// Remove deletes the messages with these keys (a consumer holding one
// gets ErrLeaseLost when it settles it) and returns how many were there.
func (q *MemoryQueue) Remove(ctx context.Context, keys ...string) (int, error) {
	want, err := memKeys(keys)
	if err != nil {
		return 0, err
	}
	b := q.b
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, e := range b.entriesLocked() {
		if !want[e.seq] {
			continue
		}
		switch e.state {
		case memReady:
			i := b.head + slices.Index(b.ready[b.head:], e)
			b.ready = slices.Delete(b.ready, i, i+1)
		case memDelayed:
			heap.Remove(&b.delayed, e.idx)
		case memInFlight:
			b.unhold(e)
		}
		e.state = memGone
		b.count--
		n++
	}
	if n > 0 {
		b.signal()
	}
	return n, nil
}
