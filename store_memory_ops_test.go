package batuta

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestMemoryStoreRetryRunRetention: a run reopened by RetryRun leaves the
// finished runs' FIFO (KeepFinished never drops it while it is unfinished,
// even after the FIFO was compacted), and joins it again, at its end, when
// it finishes again.
func TestMemoryStoreRetryRunRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := NewMemoryStore(MemoryStoreConfig{KeepFinished: 100})
	now := flowT0
	n := 0
	runOf := func(wf string, oc Outcome) string {
		n++
		id := fmt.Sprintf("run-%06d", n)
		if _, _, err := s.CreateRun(ctx, NewRun{ID: id, Workflow: wf, Event: Event{ID: id}, Tasks: []TaskSpec{{Name: "x"}}, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
		finish(t, s, wf, id, oc, now)
		return id
	}
	run := func(oc Outcome) string { return runOf("wf", oc) }
	for range 1200 { // drops 1100 runs: the FIFO is compacted
		run(OutcomeSucceeded)
	}
	a := runOf("a", OutcomeFailed)
	for range 50 {
		run(OutcomeSucceeded)
	}
	if _, err := s.RetryRun(ctx, a, RetryParams{Now: now}); err != nil {
		t.Fatal(err)
	}
	var last string
	for range 150 { // a's old entry would be the oldest kept by now
		last = run(OutcomeSucceeded)
	}
	if r, err := s.GetRun(ctx, a); err != nil || r.State != RunPending {
		t.Fatalf("reopened run after 150 more finished: %v, %v; want it kept, pending", r, err)
	}
	finish(t, s, "a", a, OutcomeSucceeded, now)
	for range 99 {
		run(OutcomeSucceeded)
	}
	if _, err := s.GetRun(ctx, a); err != nil {
		t.Fatalf("run finished again, 99 finished after it: %v; want it kept (KeepFinished 100)", err)
	}
	if _, err := s.GetRun(ctx, last); !errors.Is(err, ErrRunNotFound) {
		t.Fatalf("run finished before a's second finish and 100 finishes ago: %v, want ErrRunNotFound", err)
	}
	run(OutcomeSucceeded)
	if _, err := s.GetRun(ctx, a); !errors.Is(err, ErrRunNotFound) {
		t.Fatalf("run finished again, 100 finished after it: %v; want it dropped", err)
	}
}

// finish claims the only ready task of workflow wf, of run id, and
// completes it with oc.
func finish(t *testing.T, s *MemoryStore, wf, id string, oc Outcome, now time.Time) {
	t.Helper()
	cs, err := s.ClaimTasks(context.Background(), ClaimParams{Owner: "w", Workflows: []string{wf}, Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)})
	if err != nil || len(cs) != 1 || cs[0].RunID != id {
		t.Fatalf("claim: %v, %v; want the task of %s", cs, err, id)
	}
	res, err := s.CompleteTasks(context.Background(), []Completion{{ClaimRef: cs[0].Ref(), Outcome: oc, Attempt: cs[0].Attempt, StartedAt: now, FinishedAt: now}})
	if err != nil || res[0].Err != nil || res[0].RunFinished == "" {
		t.Fatalf("complete %s: %+v, %v; want the run finished", id, res, err)
	}
}
