// Package pullstash runs the blocking reads of a broker queue's Receive
// (Redis XREADGROUP, a NATS JetStream pull) in their own goroutines, so
// that Receive returns as soon as its ctx ends or the queue closes: what an
// abandoned read still brings is stashed for the next Receive instead of
// being lost until its lease expires. Shared by batutaredis and batutanats.
package pullstash

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/google/uuid"
)

// Stash holds the deliveries of abandoned reads and tracks the reads still
// running. The zero Stash is not usable; call New.
type Stash struct {
	pkg    string
	mu     sync.Mutex
	closed bool
	items  []Item
	wake   chan struct{} // closed (and replaced) when items get entries
	reads  sync.WaitGroup
}

// Item is a stashed delivery and when it was stashed.
type Item struct {
	D  batuta.Delivery
	At time.Time
}

// New returns an empty Stash; pkg prefixes its errors ("batutaredis").
func New(pkg string) *Stash {
	return &Stash{pkg: pkg, wake: make(chan struct{})}
}

// op is one read running in its own goroutine.
type op struct {
	mu        sync.Mutex
	done      chan struct{}
	abandoned bool
	ds        []batuta.Delivery
	err       error
}

// Read runs read in its own goroutine and waits for it. It returns what
// read returned; ctx.Err() when ctx ends first, or batuta.ErrClosed
// (wrapped) when closing is closed first or the Stash is closed, leaving
// what read still brings in the stash; and woken true, with nothing else,
// when another read stashed deliveries meanwhile (call Take).
func (s *Stash) Read(ctx context.Context, closing <-chan struct{}, read func() ([]batuta.Delivery, error)) (ds []batuta.Delivery, woken bool, err error) {
	o, wake, ok := s.start(read)
	if !ok {
		return nil, false, fmt.Errorf("%s: receive: %w", s.pkg, batuta.ErrClosed)
	}
	select {
	case <-o.done:
		return o.ds, false, o.err
	case <-ctx.Done():
		s.abandon(o)
		return nil, false, ctx.Err()
	case <-closing:
		s.abandon(o)
		return nil, false, fmt.Errorf("%s: receive: %w", s.pkg, batuta.ErrClosed)
	case <-wake:
		s.abandon(o)
		return nil, true, nil
	}
}

// start starts a read unless the Stash is closed. It also returns the
// stash's wake-up channel as of now.
func (s *Stash) start(read func() ([]batuta.Delivery, error)) (*op, <-chan struct{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, false
	}
	o := &op{done: make(chan struct{})}
	s.reads.Add(1)
	go func() {
		defer s.reads.Done()
		ds, err := read()
		o.mu.Lock()
		if o.abandoned {
			o.mu.Unlock()
			s.deposit(ds)
			return
		}
		o.ds, o.err = ds, err
		close(o.done)
		o.mu.Unlock()
	}()
	return o, s.wake, true
}

// abandon gives up waiting for o: whatever it read goes to the stash.
func (s *Stash) abandon(o *op) {
	o.mu.Lock()
	o.abandoned = true
	var ds []batuta.Delivery
	select {
	case <-o.done:
		ds, o.ds = o.ds, nil
	default:
	}
	o.mu.Unlock()
	s.deposit(ds)
}

// deposit adds deliveries to the stash and wakes waiting reads.
func (s *Stash) deposit(ds []batuta.Delivery) {
	if len(ds) == 0 {
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		s.items = append(s.items, Item{D: d, At: now})
	}
	close(s.wake)
	s.wake = make(chan struct{})
}

// Take removes and returns up to n stashed deliveries, oldest first.
func (s *Stash) Take(n int) []Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := min(n, len(s.items))
	if k == 0 {
		return nil
	}
	out := make([]Item, k)
	copy(out, s.items)
	s.items = append(s.items[:0], s.items[k:]...)
	return out
}

// Close refuses new reads, waits for the running ones to end and drops the
// stash (the broker redelivers what it held once its lease expires).
func (s *Stash) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.reads.Wait()
	s.mu.Lock()
	s.items = nil
	s.mu.Unlock()
}

// PreparePublish checks msg against maxBody (a *batuta.PayloadTooLargeError)
// and fills in what a broker queue's Publish assigns: a UUIDv7 ID when
// msg.ID is empty, the current time when msg.Time is zero.
func PreparePublish(pkg string, msg batuta.Message, maxBody int) (batuta.Message, error) {
	if len(msg.Body) > maxBody {
		return msg, fmt.Errorf("%s: publish: %w", pkg, &batuta.PayloadTooLargeError{What: "message body", Size: len(msg.Body), Limit: maxBody})
	}
	if msg.ID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return msg, fmt.Errorf("%s: publish: assign ID: %w", pkg, err)
		}
		msg.ID = id.String()
	}
	if msg.Time.IsZero() {
		msg.Time = time.Now()
	}
	return msg, nil
}
