// Package runwatch keeps the watchers of run completions of a store: Wait
// calls subscribe to a run's end, the store publishes the runs it sees
// finish (its own completions, and on shared stores those other processes
// announce), and a bounded memory of recently finished runs answers those
// who subscribe just after the fact.
package runwatch

import "sync"

// DefaultRemember is how many recently finished runs a Set remembers by
// default: enough to cover the moment between a run's creation and its
// watch starting, whatever the throughput.
const DefaultRemember = 1 << 13

// Set is the watchers of one store. The zero value is not usable; call New.
type Set struct {
	mu       sync.Mutex
	watch    map[string]*entry
	recent   map[string]struct{}
	ring     []string // recently finished, oldest at next
	next     int
	remember int
}

type entry struct {
	ch chan struct{}
	n  int
}

// New returns a Set that remembers up to remember finished runs (0:
// DefaultRemember; negative: none, for a store that answers Watch from its
// own state).
func New(remember int) *Set {
	if remember == 0 {
		remember = DefaultRemember
	}
	remember = max(remember, 0)
	return &Set{
		watch:    make(map[string]*entry),
		recent:   make(map[string]struct{}),
		remember: remember,
	}
}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Watch returns a channel closed once runID is published as finished
// (already closed if it was, recently), and a func that releases the
// watch; call it when done waiting.
func (s *Set) Watch(runID string) (<-chan struct{}, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.recent[runID]; ok {
		return closed, func() {}
	}
	e := s.watch[runID]
	if e == nil {
		e = &entry{ch: make(chan struct{})}
		s.watch[runID] = e
	}
	e.n++
	var once sync.Once
	return e.ch, func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if e.n--; e.n == 0 && s.watch[runID] == e {
				delete(s.watch, runID)
			}
		})
	}
}

// Finished publishes that the runs finished: their watchers wake, and later
// Watch calls find them finished.
func (s *Set) Finished(runIDs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range runIDs {
		if e := s.watch[id]; e != nil {
			close(e.ch)
			delete(s.watch, id)
		}
		if _, ok := s.recent[id]; ok || s.remember == 0 {
			continue
		}
		if len(s.ring) < s.remember {
			s.ring = append(s.ring, id)
		} else {
			delete(s.recent, s.ring[s.next])
			s.ring[s.next] = id
			s.next = (s.next + 1) % s.remember
		}
		s.recent[id] = struct{}{}
	}
}

// Watching returns the number of runs watched (for tests).
func (s *Set) Watching() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.watch)
}
