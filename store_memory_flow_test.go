package batuta

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

var flowT0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func flowRun(id int, wf string, at time.Time, tasks []TaskSpec) NewRun {
	return NewRun{ID: fmt.Sprintf("run-%06d", id), Workflow: wf, Event: Event{ID: fmt.Sprint(id)}, Tasks: tasks, CreatedAt: at}
}

// drain claims and completes everything claimable at now.
func drain(t *testing.T, s *MemoryStore, now time.Time) int {
	t.Helper()
	ctx := context.Background()
	n := 0
	for {
		cs, err := s.ClaimTasks(ctx, ClaimParams{Owner: "w", Limit: 7, Now: now, LeaseUntil: now.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) == 0 {
			return n
		}
		for _, c := range cs {
			res, err := s.CompleteTasks(ctx, []Completion{{ClaimRef: c.Ref(), Outcome: OutcomeSucceeded, Attempt: c.Attempt, StartedAt: now, FinishedAt: now}})
			if err != nil || res[0].Err != nil {
				t.Fatalf("complete: %v %v", err, res[0].Err)
			}
			n++
		}
	}
}

// TestMemoryStoreFlowForgetsIdleState: once every run finished, no
// concurrency group, task group or debounce entry is left behind, however
// the runs ended.
func TestMemoryStoreFlowForgetsIdleState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{})
	tasks := []TaskSpec{{Name: "a", Concurrency: &ConcurrencySpec{Key: "wf/a", Max: 2}}, {Name: "b", Deps: []int{0}}}
	strategies := []ConcurrencyStrategy{ConcurrencyQueue, ConcurrencyCancelInProgress, ConcurrencyCancelNewest}
	var runs []NewRun
	for i := 0; i < 300; i++ {
		nr := flowRun(i, "wf", flowT0.Add(time.Duration(i)*time.Millisecond), tasks)
		nr.Concurrency = &ConcurrencySpec{Key: fmt.Sprintf("wf/k%d", i%17), Max: 1 + i%3, Strategy: strategies[i%3]}
		switch i % 5 {
		case 0:
			nr.Debounce = &DebounceSpec{Key: fmt.Sprintf("d%d", i%7), Window: time.Second, MaxWait: time.Minute}
		case 1:
			nr.StartAt = nr.CreatedAt.Add(time.Duration(i) * time.Second)
		}
		runs = append(runs, nr)
	}
	if _, err := s.CreateRuns(ctx, runs); err != nil {
		t.Fatal(err)
	}
	// Cancel some while waiting, rescue others, then run the rest.
	for i := 0; i < 300; i += 11 {
		if _, err := s.CancelRun(ctx, runs[i].ID, "test", flowT0); err != nil && !errors.Is(err, ErrRunNotFound) { // merged by debounce: no run of its own
			t.Fatal(err)
		}
	}
	if _, err := s.ClaimTasks(ctx, ClaimParams{Owner: "w", Limit: 20, Now: flowT0.Add(time.Minute), LeaseUntil: flowT0.Add(2 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RescueExpired(ctx, flowT0.Add(3*time.Minute), 0); err != nil {
		t.Fatal(err)
	}
	drain(t, s, flowT0.Add(24*time.Hour))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active != 0 {
		t.Fatalf("%d runs unfinished", s.active)
	}
	if len(s.groups) != 0 || len(s.tgroups) != 0 || len(s.debounce) != 0 {
		t.Fatalf("left behind: %d groups, %d task groups, %d debounce entries", len(s.groups), len(s.tgroups), len(s.debounce))
	}
}

// TestMemoryStoreRateForgetsIdleKeys: a sweep drops keys idle for longer
// than their Per, and a forgotten key starts with its full burst.
func TestMemoryStoreRateForgetsIdleKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{})
	for i := 0; i < 100; i++ {
		if _, err := s.ReserveRate(ctx, RateSpec{Key: fmt.Sprint(i), Limit: 1, Per: time.Second, Burst: 1}, flowT0); err != nil {
			t.Fatal(err)
		}
	}
	long := RateSpec{Key: "long", Limit: 1, Per: time.Hour, Burst: 1}
	if _, err := s.ReserveRate(ctx, long, flowT0); err != nil {
		t.Fatal(err)
	}
	s.rates.mu.Lock()
	s.rates.sweepAt = 0 // sweep at the next call
	s.rates.mu.Unlock()
	at, err := s.ReserveRate(ctx, RateSpec{Key: "0", Limit: 1, Per: time.Second, Burst: 1}, flowT0.Add(time.Minute))
	if err != nil || !at.Equal(flowT0.Add(time.Minute)) {
		t.Fatalf("idle key: %v, %v", at, err)
	}
	s.rates.mu.Lock()
	n := len(s.rates.keys)
	s.rates.mu.Unlock()
	if n != 2 { // "0" again and "long", still within its Per
		t.Fatalf("%d keys kept after the sweep, want 2", n)
	}
}

// TestMemoryStorePruneKeepsWaitingRuns: Prune deletes finished runs only;
// runs waiting for their start, their group or a resume stay and run.
func TestMemoryStorePruneKeepsWaitingRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{})
	one := []TaskSpec{{Name: "x"}}
	k := &ConcurrencySpec{Key: "wf/k", Max: 1}
	delayed := flowRun(1, "wf", flowT0, one)
	delayed.StartAt = flowT0.Add(time.Hour)
	held, waiting := flowRun(2, "wf", flowT0, one), flowRun(3, "wf", flowT0.Add(time.Millisecond), one)
	held.Concurrency, waiting.Concurrency = k, k
	paused := flowRun(4, "paused", flowT0, one)
	done := flowRun(5, "wf", flowT0, one)
	if _, err := s.SetPaused(ctx, "paused", true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateRuns(ctx, []NewRun{done, delayed, held, waiting, paused}); err != nil {
		t.Fatal(err)
	}
	cs, err := s.ClaimTasks(ctx, ClaimParams{Owner: "w", Limit: 10, Now: flowT0, LeaseUntil: flowT0.Add(time.Minute)})
	if err != nil || len(cs) != 2 {
		t.Fatalf("claimed %d (%v), want done's and held's", len(cs), err)
	}
	for _, c := range cs {
		if c.RunID == done.ID {
			if _, err := s.CompleteTasks(ctx, []Completion{{ClaimRef: c.Ref(), Outcome: OutcomeSucceeded, Attempt: 1, StartedAt: flowT0, FinishedAt: flowT0}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	n, err := s.Prune(ctx, PrunePolicy{Before: flowT0.Add(100 * time.Hour), KeepLast: 1})
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1 (the finished run)", n, err)
	}
	for _, nr := range []NewRun{delayed, held, waiting, paused} {
		if _, err := s.GetRun(ctx, nr.ID); err != nil {
			t.Fatalf("unfinished run %s pruned: %v", nr.ID, err)
		}
	}
	for _, c := range cs {
		if c.RunID == held.ID {
			if _, err := s.CompleteTasks(ctx, []Completion{{ClaimRef: c.Ref(), Outcome: OutcomeSucceeded, Attempt: 1, StartedAt: flowT0, FinishedAt: flowT0}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.SetPaused(ctx, "paused", false); err != nil {
		t.Fatal(err)
	}
	if got := drain(t, s, flowT0.Add(2*time.Hour)); got != 3 {
		t.Fatalf("after prune %d runs ran, want 3 (waiting, delayed, paused)", got)
	}
}

// BenchmarkMemoryStoreWaiting is BenchmarkMemoryStore's cycle with 10,000
// runs waiting for a full concurrency group and 10,000 delayed runs: waiting
// work must not slow claims down.
func BenchmarkMemoryStoreWaiting(b *testing.B) {
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{KeepFinished: 1000})
	one := []TaskSpec{{Name: "x"}}
	const waiting = 10000
	for i := 0; i < 2*waiting; i++ {
		nr := flowRun(i, "wf", flowT0, one)
		if i < waiting {
			nr.Concurrency = &ConcurrencySpec{Key: "wf/busy", Max: 1}
		} else {
			nr.StartAt = flowT0.Add(time.Hour)
		}
		if _, _, err := s.CreateRun(ctx, nr); err != nil {
			b.Fatal(err)
		}
	}
	// The busy group's one admitted run holds its slot for the whole run.
	if cs, err := s.ClaimTasks(ctx, ClaimParams{Owner: "w", Workflows: []string{"wf"}, Limit: 1, Now: flowT0, LeaseUntil: flowT0.Add(time.Hour)}); err != nil || len(cs) != 1 {
		b.Fatalf("claim: %v, %d", err, len(cs))
	}
	buf := make([]Claim, 0, 8)
	comps := make([]Completion, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := s.CreateRun(ctx, flowRun(2*waiting+i, "wf", flowT0, one)); err != nil {
			b.Fatal(err)
		}
		cs, err := s.ClaimTasks(ctx, ClaimParams{Owner: "w", Workflows: []string{"wf"}, Limit: 1, Now: flowT0, LeaseUntil: flowT0.Add(time.Minute), Buf: buf})
		if err != nil || len(cs) != 1 {
			b.Fatalf("claim: %v, %d", err, len(cs))
		}
		comps[0] = Completion{ClaimRef: cs[0].Ref(), Outcome: OutcomeSucceeded, Attempt: 1, StartedAt: flowT0, FinishedAt: flowT0}
		if _, err := s.CompleteTasks(ctx, comps); err != nil {
			b.Fatal(err)
		}
	}
}
