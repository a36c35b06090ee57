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

// TestMemoryStoreFairnessAtScale: one key with 10,000 queued runs and 100
// quiet keys with 10 runs each (every key Max 1), claimed 16 at a time:
// the quiet keys finish while the noisy key has run about its share (one
// run per turn of the keys), not its backlog.
func TestMemoryStoreFairnessAtScale(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{KeepFinished: -1})
	one := []TaskSpec{{Name: "x"}}
	const noisy, quietKeys, perQuiet = 10000, 100, 10
	var batch []NewRun
	id := 0
	add := func(key string) {
		nr := flowRun(id, "wf", flowT0.Add(time.Duration(id)*time.Microsecond), one)
		nr.Concurrency = &ConcurrencySpec{Key: key, Max: 1}
		batch = append(batch, nr)
		id++
	}
	for i := 0; i < noisy; i++ {
		add("wf/noisy")
	}
	for q := 0; q < quietKeys; q++ {
		for i := 0; i < perQuiet; i++ {
			add(fmt.Sprintf("wf/q%d", q))
		}
	}
	if _, err := s.CreateRuns(ctx, batch); err != nil {
		t.Fatal(err)
	}
	quietLeft, noisyDone := quietKeys*perQuiet, 0
	for round := 0; quietLeft > 0; round++ {
		if round > 1000 {
			t.Fatalf("%d quiet runs left after %d rounds", quietLeft, round)
		}
		cs, err := s.ClaimTasks(ctx, ClaimParams{Owner: "w", Workflows: []string{"wf"}, Limit: 16, Now: flowT0.Add(time.Second), LeaseUntil: flowT0.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if _, err := s.CompleteTasks(ctx, []Completion{{ClaimRef: c.Ref(), Outcome: OutcomeSucceeded, Attempt: 1, StartedAt: flowT0, FinishedAt: flowT0}}); err != nil {
				t.Fatal(err)
			}
			var n int
			if _, err := fmt.Sscan(c.Event.ID, &n); err != nil {
				t.Fatal(err)
			}
			if n < noisy {
				noisyDone++
			} else {
				quietLeft--
			}
		}
	}
	// Each turn of the 101 keys runs one run of each: the quiet keys' 10
	// runs take 10 turns, in which the noisy key runs about 10.
	if noisyDone > 2*perQuiet {
		t.Fatalf("the noisy key ran %d runs before the quiet keys finished, want about %d", noisyDone, perQuiet)
	}
}

// BenchmarkMemoryStoreQueueKeys: runs created, claimed and completed in
// batches of 64, under a workflow limit of Max 1 over 1,000 keys ("max1")
// and without limits ("none"), to price admission.
func BenchmarkMemoryStoreQueueKeys(b *testing.B) {
	for _, limited := range []bool{true, false} {
		name := "none"
		if limited {
			name = "max1"
		}
		b.Run(name, func(b *testing.B) { benchQueueKeys(b, limited) })
	}
}

func benchQueueKeys(b *testing.B, limited bool) {
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{KeepFinished: 1000})
	one := []TaskSpec{{Name: "x"}}
	specs := make([]*ConcurrencySpec, 1000)
	for i := range specs {
		specs[i] = &ConcurrencySpec{Key: fmt.Sprintf("wf/k%d", i), Max: 1}
	}
	buf := make([]Claim, 0, 64)
	comps := make([]Completion, 0, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		nr := flowRun(i, "wf", flowT0, one)
		if limited {
			nr.Concurrency = specs[i%len(specs)]
		}
		if _, _, err := s.CreateRun(ctx, nr); err != nil {
			b.Fatal(err)
		}
		if i%64 != 63 {
			continue
		}
		cs, err := s.ClaimTasks(ctx, ClaimParams{Owner: "w", Workflows: []string{"wf"}, Limit: 64, Now: flowT0, LeaseUntil: flowT0.Add(time.Minute), Buf: buf})
		if err != nil {
			b.Fatal(err)
		}
		comps = comps[:0]
		for _, c := range cs {
			comps = append(comps, Completion{ClaimRef: c.Ref(), Outcome: OutcomeSucceeded, Attempt: 1, StartedAt: flowT0, FinishedAt: flowT0})
		}
		if _, err := s.CompleteTasks(ctx, comps); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMemoryStoreMaxActiveLetsMergesIn: at MaxActive an event that merges
// into a debounced run adds no run and is not refused; one that would add
// a run is.
func TestMemoryStoreMaxActiveLetsMergesIn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{})
	one := []TaskSpec{{Name: "x"}}
	db := &DebounceSpec{Key: "d", Window: time.Minute, MaxWait: time.Hour}
	mk := func(id int, key string) NewRun {
		nr := flowRun(id, "wf", flowT0.Add(time.Duration(id)*time.Second), one)
		nr.MaxActive = 1
		nr.Debounce = &DebounceSpec{Key: key, Window: db.Window, MaxWait: db.MaxWait}
		return nr
	}
	if _, created, err := s.CreateRun(ctx, mk(1, "d")); err != nil || !created {
		t.Fatalf("first: %v %v", created, err)
	}
	res, err := s.CreateRuns(ctx, []NewRun{mk(2, "d")})
	if err != nil || !res[0].Debounced {
		t.Fatalf("merge at MaxActive: %+v, %v; want merged", res, err)
	}
	if _, _, err := s.CreateRun(ctx, mk(3, "other")); !errors.Is(err, ErrBusy) {
		t.Fatalf("new run at MaxActive: %v, want ErrBusy", err)
	}
}
