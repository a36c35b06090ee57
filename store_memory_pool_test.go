package batuta

import (
	"context"
	"testing"
	"time"
)

// TestMemoryStoreReusesDroppedRuns: the per-task arrays of a dropped run
// serve the next run of the same shape, which starts from clean state, and
// snapshots taken before the drop are not touched by the reuse. Canceled
// runs and runs with flow control are not reused (stale queue entries and
// group heaps may still point at their tasks).
func TestMemoryStoreReusesDroppedRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{KeepFinished: 1})
	const n = 100
	specs := make([]TaskSpec, n)
	for i := range specs {
		specs[i].Name = "t" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		if i > 0 {
			specs[i].Deps = []int{i - 1}
		}
	}
	create := func(id int) *memRun {
		t.Helper()
		rid, created, err := s.CreateRun(ctx, flowRun(id, "w", flowT0, specs))
		if err != nil || !created {
			t.Fatalf("create %d: %v %v", id, created, err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.runs[rid]
	}
	r1 := create(1)
	slab := &r1.tasks[0]
	if got := drain(t, s, flowT0.Add(time.Second)); got != n {
		t.Fatalf("ran %d tasks, want %d", got, n)
	}
	snap, err := s.GetRun(ctx, r1.ID)
	if err != nil {
		t.Fatal(err)
	}
	r2 := create(2) // r1 is kept (KeepFinished 1) until r2 finishes
	if &r2.tasks[0] == slab {
		t.Fatal("a kept run's arrays were reused")
	}
	drain(t, s, flowT0.Add(2*time.Second)) // r2 finishes: r1 is dropped, its arrays pooled
	r3 := create(3)
	if &r3.tasks[0] != slab {
		t.Fatal("the dropped run's arrays were not reused")
	}
	for i := range r3.tasks {
		tk := &r3.tasks[i]
		if tk.run != r3 || tk.state != msPending || len(tk.attempts) != 0 || tk.output != nil || int(r3.pending(i)) != len(specs[i].Deps) {
			t.Fatalf("task %d of the new run starts dirty: %+v", i, tk)
		}
	}
	if got := drain(t, s, flowT0.Add(3*time.Second)); got != n {
		t.Fatalf("ran %d tasks of the new run, want %d", got, n)
	}
	r3s, err := s.GetRun(ctx, r3.ID)
	if err != nil || r3s.State != RunSucceeded {
		t.Fatalf("new run: %v %v", r3s, err)
	}
	if snap.State != RunSucceeded || len(snap.Tasks) != n || snap.Tasks[5].Attempts[0].FinishedAt != flowT0.Add(time.Second) {
		t.Fatal("a snapshot of the dropped run changed")
	}

	// A canceled run's arrays are not reused.
	r4 := create(4)
	slab4 := &r4.tasks[0]
	if _, err := s.CancelRun(ctx, r4.ID, "stop", flowT0); err != nil {
		t.Fatal(err)
	}
	create(5)
	drain(t, s, flowT0.Add(4*time.Second)) // r5 finishes: r4 dropped
	if r6 := create(6); &r6.tasks[0] == slab4 {
		t.Fatal("a canceled run's arrays were reused")
	}
}
