package batuta

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestMemoryStoreOpsRandomized drives the memory store with random
// operations mixing waits (timed and not), signals, child runs, cancels,
// retries of finished runs, rescues and task- and workflow-level
// concurrency, and checks after each step that:
//   - no task is claimed twice, nor before its dependencies finished, nor
//     before the RetryAt of its last retry (no leftover queue entry of an
//     earlier life makes it claimable);
//   - each run's count of unfinished tasks, each parent task's count of
//     unfinished children and the store's count of unfinished runs match
//     the tasks and runs themselves;
//
// and at the end that every run finishes once signals are sent to its
// waiting tasks and work is claimed: no wake is lost.
func TestMemoryStoreOpsRandomized(t *testing.T) {
	t.Parallel()
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { randomOps(t, seed) })
	}
}

func randomOps(t *testing.T, seed uint64) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 13))
	s := NewMemoryStore(MemoryStoreConfig{KeepFinished: -1})
	now := flowT0
	id := 0
	var ids []string
	running := map[int64]Claim{}
	notBefore := map[string]time.Time{} // run/task -> RetryAt of its last retry
	parents := map[string]bool{}        // run/task with child runs: woken early when they finish
	specs := map[string][]TaskSpec{}
	tk := func(run, task string) string { return run + "/" + task }

	newRun := func(parent *RunLink) NewRun {
		id++
		n := 1 + rng.IntN(4)
		tasks := make([]TaskSpec, n)
		for i := range tasks {
			tasks[i].Name = fmt.Sprintf("t%d", i)
			if i > 0 && rng.IntN(2) == 0 {
				tasks[i].Deps = []int{rng.IntN(i)}
				if i > 1 && rng.IntN(3) == 0 {
					if d := rng.IntN(i); d != tasks[i].Deps[0] {
						tasks[i].Deps = append(tasks[i].Deps, d)
					}
				}
			}
			if rng.IntN(3) == 0 {
				tasks[i].Signal = fmt.Sprintf("s%d", rng.IntN(2))
			}
			if rng.IntN(6) == 0 {
				tasks[i].Concurrency = &ConcurrencySpec{Key: "tk", Max: 2}
			}
		}
		nr := NewRun{ID: fmt.Sprintf("run-%06d", id), Workflow: fmt.Sprintf("wf%d", rng.IntN(2)), Tasks: tasks,
			Event: Event{ID: fmt.Sprint(id)}, CreatedAt: now, Parent: parent}
		if rng.IntN(5) == 0 {
			nr.Concurrency = &ConcurrencySpec{Key: "q", Max: 2}
		}
		if rng.IntN(6) == 0 {
			nr.StartAt = now.Add(time.Duration(rng.IntN(30)) * time.Second)
		}
		return nr
	}
	create := func(parent *RunLink) {
		nr := newRun(parent)
		if _, _, err := s.CreateRun(ctx, nr); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, nr.ID)
		specs[nr.ID] = nr.Tasks
		if parent != nil {
			parents[tk(parent.RunID, parent.Task)] = true
		}
	}
	check := func(step int, op string) {
		t.Helper()
		s.mu.Lock()
		defer s.mu.Unlock()
		active := 0
		for _, r := range s.runs {
			unfinished := int32(0)
			for i := range r.tasks {
				if !r.tasks[i].state.finished() {
					unfinished++
				}
			}
			if unfinished != r.remaining {
				t.Fatalf("step %d (%s): run %s counts %d unfinished tasks, has %d", step, op, r.ID, r.remaining, unfinished)
			}
			if r.State.Finished() != (unfinished == 0) {
				t.Fatalf("step %d (%s): run %s is %s with %d unfinished tasks", step, op, r.ID, r.State, unfinished)
			}
			if !r.State.Finished() {
				active++
			}
			if r.ops == nil {
				continue
			}
			for task, k := range r.ops.kids {
				n := 0
				for _, c := range k.runs {
					if !c.State.Finished() {
						n++
					}
				}
				if n != k.unfinished {
					t.Fatalf("step %d (%s): %s/%s counts %d unfinished children, has %d", step, op, r.ID, task, k.unfinished, n)
				}
			}
		}
		if active != s.active {
			t.Fatalf("step %d (%s): store counts %d unfinished runs, has %d", step, op, s.active, active)
		}
	}
	claim := func(limit int) []Claim {
		cs, err := s.ClaimTasks(ctx, ClaimParams{Owner: "w", Limit: limit, Now: now, LeaseUntil: now.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			for _, o := range running {
				if o.RunID == c.RunID && o.Task == c.Task {
					t.Fatalf("%s/%s claimed twice", c.RunID, c.Task)
				}
			}
			for _, u := range c.Upstream {
				if !u.State.Finished() {
					t.Fatalf("%s/%s claimed while its dependency %s is %s", c.RunID, c.Task, u.Name, u.State)
				}
			}
			if nb := notBefore[tk(c.RunID, c.Task)]; now.Before(nb) && !parents[tk(c.RunID, c.Task)] {
				t.Fatalf("%s/%s claimed at %v, before its retry at %v", c.RunID, c.Task, now.Sub(flowT0), nb.Sub(flowT0))
			}
			running[c.Token] = c
		}
		return cs
	}
	complete := func(c Claim, oc Outcome) {
		delete(running, c.Token)
		comp := Completion{ClaimRef: c.Ref(), Outcome: oc, Attempt: c.Attempt, StartedAt: now, FinishedAt: now}
		switch oc {
		case OutcomeRetry:
			comp.RetryAt = now.Add(time.Duration(1+rng.IntN(20)) * time.Second)
			notBefore[tk(c.RunID, c.Task)] = comp.RetryAt
		case OutcomeWait:
			var sig string
			for _, ts := range specs[c.RunID] {
				if ts.Name == c.Task {
					sig = ts.Signal
				}
			}
			if sig == "" || rng.IntN(2) == 0 { // no signal: a wait with no time would last forever
				comp.RetryAt = now.Add(time.Duration(1+rng.IntN(60)) * time.Second)
			}
			comp.WaitFor = "random"
		case OutcomeSucceeded:
			if c.Signal != nil {
				comp.Output, comp.ConsumeSignal = c.Signal.Data, c.Signal.Seq
			}
		}
		if oc != OutcomeRetry {
			delete(notBefore, tk(c.RunID, c.Task))
		}
		res, err := s.CompleteTasks(ctx, []Completion{comp})
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Err != nil && !errors.Is(res[0].Err, ErrLeaseLost) {
			t.Fatal(res[0].Err)
		}
	}
	anyRunning := func() (Claim, bool) {
		for _, c := range running {
			return c, true
		}
		return Claim{}, false
	}
	outcomes := []Outcome{OutcomeSucceeded, OutcomeSucceeded, OutcomeSucceeded, OutcomeFailed, OutcomeRetry,
		OutcomeWait, OutcomeWait, OutcomeRelease, OutcomeUpstreamFailed, OutcomeCanceled}
	for step := 0; step < 800; step++ {
		var op string
		switch x := rng.IntN(100); {
		case x < 15:
			op = "create"
			create(nil)
		case x < 22:
			op = "create child"
			if c, ok := anyRunning(); ok {
				create(&RunLink{RunID: c.RunID, Task: c.Task})
			}
		case x < 45:
			op = "claim"
			claim(1 + rng.IntN(5))
		case x < 70:
			op = "complete"
			if c, ok := anyRunning(); ok {
				complete(c, outcomes[rng.IntN(len(outcomes))])
			}
		case x < 78:
			op = "signal"
			if len(ids) > 0 {
				_, err := s.SendSignal(ctx, SignalSend{RunID: ids[rng.IntN(len(ids))], Name: fmt.Sprintf("s%d", rng.IntN(2)),
					Data: step, SentAt: now, MaxBuffered: 3})
				if err != nil && !errors.Is(err, ErrNoWaiter) && !errors.Is(err, ErrSignalBufferFull) {
					t.Fatal(err)
				}
			}
		case x < 82:
			op = "cancel"
			if len(ids) > 0 {
				if _, err := s.CancelRun(ctx, ids[rng.IntN(len(ids))], "random", now); err != nil {
					t.Fatal(err)
				}
			}
		case x < 87:
			op = "retry"
			if len(ids) > 0 {
				from := ""
				if rng.IntN(3) == 0 {
					from = fmt.Sprintf("t%d", rng.IntN(4))
				}
				rid := ids[rng.IntN(len(ids))]
				res, err := s.RetryRun(ctx, rid, RetryParams{From: from, Now: now})
				if err != nil && !errors.Is(err, ErrNotRetryable) {
					t.Fatal(err)
				}
				for _, name := range res.Reset {
					delete(notBefore, tk(rid, name))
				}
			}
		case x < 89:
			op = "rescue"
			now = now.Add(2 * time.Minute)
			if _, _, err := s.RescueExpired(ctx, now, 2); err != nil {
				t.Fatal(err)
			}
			clear(running) // their leases are gone: completions would be fenced
		default:
			op = "tick"
			now = now.Add(time.Duration(rng.IntN(10)) * time.Second)
		}
		check(step, op)
	}
	// Drain: complete what runs, signal what waits for a signal, claim
	// and succeed everything else.
	for _, c := range running {
		complete(c, OutcomeSucceeded)
	}
	for round := 0; ; round++ {
		s.mu.Lock()
		active := s.active
		var waiting []SignalSend
		for _, r := range s.runs {
			for i := range r.tasks {
				if t := &r.tasks[i]; t.state == msPending && t.waitState() != nil && r.specs[i].Signal != "" {
					waiting = append(waiting, SignalSend{RunID: r.ID, Name: r.specs[i].Signal, Data: "drain", SentAt: now})
				}
			}
		}
		s.mu.Unlock()
		if active == 0 {
			break
		}
		if round > 1000 {
			t.Fatalf("%d runs never finish", active)
		}
		for _, sig := range waiting {
			if _, err := s.SendSignal(ctx, sig); err != nil {
				t.Fatalf("drain: signal %s/%s: %v", sig.RunID, sig.Name, err)
			}
		}
		now = now.Add(time.Hour)
		if _, _, err := s.RescueExpired(ctx, now, 1000); err != nil {
			t.Fatal(err)
		}
		for _, c := range claim(50) {
			complete(c, OutcomeSucceeded)
		}
		check(-round, "drain")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.groups) != 0 || len(s.tgroups) != 0 || s.tokens.live != 0 {
		t.Fatalf("left behind: %d groups, %d task groups, %d tokens", len(s.groups), len(s.tgroups), s.tokens.live)
	}
}
