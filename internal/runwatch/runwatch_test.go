package runwatch

import "testing"

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestWatchFinishedRemember(t *testing.T) {
	s := New(2)
	ch, stop := s.Watch("a")
	ch2, stop2 := s.Watch("a")
	if isClosed(ch) || s.Watching() != 1 {
		t.Fatal("a fresh watch is open, one entry per run")
	}
	s.Finished("a")
	if !isClosed(ch) || !isClosed(ch2) {
		t.Fatal("Finished wakes every watcher of the run")
	}
	stop()
	stop2()
	stop() // idempotent
	if s.Watching() != 0 {
		t.Fatal("entry left behind")
	}
	if ch, _ := s.Watch("a"); !isClosed(ch) {
		t.Fatal("a run that finished recently is found finished")
	}
	s.Finished("b", "c") // evicts a
	if ch, stop := s.Watch("a"); isClosed(ch) {
		t.Fatal("remembered more than 2")
	} else {
		stop()
	}
	if ch, _ := s.Watch("c"); !isClosed(ch) {
		t.Fatal("c forgotten")
	}
}

func TestStopReleases(t *testing.T) {
	s := New(-1)
	_, stop := s.Watch("x")
	stop()
	if s.Watching() != 0 {
		t.Fatal("stop did not release the watch")
	}
	s.Finished("x")
	if ch, stop := s.Watch("x"); isClosed(ch) {
		t.Fatal("New(-1) remembers nothing")
	} else {
		stop()
	}
}
