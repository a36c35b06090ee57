package batutatest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

func TestFakeClockFiresInOrder(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := batutatest.NewFakeClock(t0)
	late, early, stopped := c.NewTimer(2*time.Second), c.NewTimer(time.Second), c.NewTimer(time.Second)
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop must report true once, then false")
	}
	if !c.WaitForTimers(2, time.Second) || c.Timers() != 2 {
		t.Fatalf("Timers = %d, want 2", c.Timers())
	}
	c.Advance(1500 * time.Millisecond)
	select {
	case at := <-early.C():
		if !at.Equal(t0.Add(time.Second)) {
			t.Fatalf("early fired at %v", at)
		}
	default:
		t.Fatal("early timer did not fire")
	}
	select {
	case <-late.C():
		t.Fatal("late timer fired early")
	default:
	}
	c.Set(t0) // never backwards
	if !c.Now().Equal(t0.Add(1500 * time.Millisecond)) {
		t.Fatalf("Now = %v", c.Now())
	}
	c.Advance(time.Second)
	if at := <-late.C(); !at.Equal(t0.Add(2 * time.Second)) {
		t.Fatalf("late fired at %v", at)
	}
	if now := <-c.NewTimer(0).C(); !now.Equal(c.Now()) {
		t.Fatal("a zero timer fires at once")
	}
	if c.WaitForTimers(1, 10*time.Millisecond) {
		t.Fatal("WaitForTimers reported a timer that does not exist")
	}
}

func TestPushTrigger(t *testing.T) {
	p := batutatest.NewPushTrigger()
	ctx, cancel := context.WithCancel(context.Background())
	var got []batuta.Event
	busy := errors.New("busy")
	done := make(chan error)
	go func() {
		done <- p.Run(ctx, func(_ context.Context, ev batuta.Event) error {
			if ev.ID == "reject" {
				return busy
			}
			got = append(got, ev)
			return nil
		})
	}()
	if err := p.Push(context.Background(), batuta.Event{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := p.Push(context.Background(), batuta.Event{ID: "reject"}); !errors.Is(err, busy) {
		t.Fatalf("Push returned %v, want fire's error", err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	short, stop := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer stop()
	if err := p.Push(short, batuta.Event{ID: "b"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Push with no running trigger: %v, want the ctx error", err)
	}
	if len(got) != 1 || got[0].ID != "a" {
		t.Fatalf("fired %v", got)
	}
}
