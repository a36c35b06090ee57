package batuta

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestMemoryStoreFlowRandomized drives the memory store with random
// operations mixing every flow feature (delays, priorities, Queue,
// CancelInProgress and CancelNewest groups, task groups, debounce, pause,
// every outcome, cancels, rescues, batch creates) and checks after each
// step that no Queue group has more started, unfinished runs than its Max
// and no task group more running tasks than its Max; at the end everything
// runs to completion and no flow state is left behind.
func TestMemoryStoreFlowRandomized(t *testing.T) {
	t.Parallel()
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { randomFlow(t, seed) })
	}
}

func randomFlow(t *testing.T, seed uint64) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 11))
	s := NewMemoryStore(MemoryStoreConfig{KeepFinished: -1})
	queueMax := map[string]int{"q0": 1, "q1": 2, "q2": 3}
	taskMax := map[string]int{"t0": 1, "t1": 2}
	now := flowT0
	id := 0
	var running []Claim
	newRun := func() NewRun {
		id++
		n := 1 + rng.IntN(3)
		tasks := make([]TaskSpec, n)
		for i := range tasks {
			tasks[i].Name = fmt.Sprintf("t%d", i)
			if i > 0 && rng.IntN(2) == 0 {
				tasks[i].Deps = []int{rng.IntN(i)}
			}
			if rng.IntN(3) == 0 {
				k := fmt.Sprintf("t%d", rng.IntN(2))
				tasks[i].Concurrency = &ConcurrencySpec{Key: k, Max: taskMax[k]}
			}
		}
		nr := NewRun{ID: fmt.Sprintf("run-%06d", id), Workflow: fmt.Sprintf("wf%d", rng.IntN(2)), Tasks: tasks,
			Event: Event{ID: fmt.Sprint(rng.IntN(3 * id))}, CreatedAt: now, Priority: rng.IntN(4) - 1}
		if rng.IntN(4) == 0 {
			nr.StartAt = now.Add(time.Duration(rng.IntN(60)) * time.Second)
		}
		switch rng.IntN(6) {
		case 0, 1:
			k := fmt.Sprintf("q%d", rng.IntN(3))
			nr.Concurrency = &ConcurrencySpec{Key: k, Max: queueMax[k]}
		case 2:
			nr.Concurrency = &ConcurrencySpec{Key: "cip", Max: 1 + rng.IntN(2), Strategy: ConcurrencyCancelInProgress}
		case 3:
			nr.Concurrency = &ConcurrencySpec{Key: "cn", Max: 1, Strategy: ConcurrencyCancelNewest}
		}
		if rng.IntN(5) == 0 {
			nr.Debounce = &DebounceSpec{Key: fmt.Sprintf("d%d", rng.IntN(2)), Window: 10 * time.Second, MaxWait: 30 * time.Second}
		}
		return nr
	}
	check := func(step int, op string) {
		t.Helper()
		s.mu.Lock()
		defer s.mu.Unlock()
		started := map[string]int{}
		tasksRunning := map[string]int{}
		for _, r := range s.runs {
			if r.State == RunRunning && r.flow != nil && r.flow.max > 0 {
				if _, ok := queueMax[r.ConcurrencyKey]; ok {
					started[r.ConcurrencyKey]++
				}
			}
			for i := range r.tasks {
				if tk := &r.tasks[i]; tk.state == TaskRunning {
					if c := tk.spec().Concurrency; c != nil {
						tasksRunning[c.Key]++
					}
				}
			}
		}
		for k, n := range started {
			if n > queueMax[k] {
				t.Fatalf("step %d (%s): group %s has %d started unfinished runs, Max %d", step, op, k, n, queueMax[k])
			}
		}
		for k, n := range tasksRunning {
			if n > taskMax[k] {
				t.Fatalf("step %d (%s): task group %s has %d running, Max %d", step, op, k, n, taskMax[k])
			}
		}
	}
	complete := func(c Claim, oc Outcome) {
		comp := Completion{ClaimRef: c.Ref(), Outcome: oc, Attempt: c.Attempt, StartedAt: now, FinishedAt: now}
		switch oc {
		case OutcomeRetry, OutcomeSnooze, OutcomeDefer:
			comp.RetryAt = now.Add(time.Duration(rng.IntN(20)) * time.Second)
			comp.RateReserved = oc == OutcomeDefer && rng.IntN(2) == 0
		case OutcomeRelease, OutcomeSkipped, OutcomeCanceled, OutcomeUpstreamFailed:
			comp.StartedAt = time.Time{}
		}
		if _, err := s.CompleteTasks(ctx, []Completion{comp}); err != nil {
			t.Fatal(err)
		}
	}
	outcomes := []Outcome{OutcomeSucceeded, OutcomeSucceeded, OutcomeSucceeded, OutcomeFailed, OutcomeRetry,
		OutcomeSnooze, OutcomeDefer, OutcomeRelease, OutcomeSkipped, OutcomeUpstreamFailed, OutcomeCanceled}
	for step := 0; step < 600; step++ {
		var op string
		switch x := rng.IntN(100); {
		case x < 20:
			op = "create"
			if _, _, err := s.CreateRun(ctx, newRun()); err != nil {
				t.Fatal(err)
			}
		case x < 25:
			op = "create batch"
			batch := make([]NewRun, 1+rng.IntN(4))
			for i := range batch {
				batch[i] = newRun()
			}
			if _, err := s.CreateRuns(ctx, batch); err != nil {
				t.Fatal(err)
			}
		case x < 50:
			op = "claim"
			cs, err := s.ClaimTasks(ctx, ClaimParams{Owner: "w", Limit: 1 + rng.IntN(5), Now: now, LeaseUntil: now.Add(time.Minute)})
			if err != nil {
				t.Fatal(err)
			}
			running = append(running, cs...)
		case x < 75:
			op = "complete"
			if len(running) > 0 {
				i := rng.IntN(len(running))
				c := running[i]
				running = append(running[:i], running[i+1:]...)
				complete(c, outcomes[rng.IntN(len(outcomes))])
			}
		case x < 80:
			op = "cancel"
			if id > 0 {
				_, _ = s.CancelRun(ctx, fmt.Sprintf("run-%06d", 1+rng.IntN(id)), "random", now)
			}
		case x < 83:
			op = "rescue"
			now = now.Add(2 * time.Minute)
			if _, _, err := s.RescueExpired(ctx, now, 2); err != nil {
				t.Fatal(err)
			}
			running = running[:0] // their leases are gone: completions would be fenced
		case x < 86:
			op = "pause"
			if _, err := s.SetPaused(ctx, fmt.Sprintf("wf%d", rng.IntN(2)), rng.IntN(2) == 0); err != nil {
				t.Fatal(err)
			}
		case x < 88:
			op = "next due"
			if _, err := s.NextDue(ctx, nil, now); err != nil {
				t.Fatal(err)
			}
		default:
			op = "tick"
			now = now.Add(time.Duration(rng.IntN(10)) * time.Second)
		}
		check(step, op)
	}
	// Drain: resume, complete everything, rescue what was dropped.
	for _, wf := range []string{"wf0", "wf1"} {
		if _, err := s.SetPaused(ctx, wf, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range running {
		complete(c, OutcomeSucceeded)
	}
	for round := 0; ; round++ {
		s.mu.Lock()
		active := s.active
		s.mu.Unlock()
		if active == 0 {
			break
		}
		if round > 1000 {
			t.Fatalf("%d runs never finish", active)
		}
		now = now.Add(time.Hour)
		if _, _, err := s.RescueExpired(ctx, now, 1000); err != nil {
			t.Fatal(err)
		}
		cs, err := s.ClaimTasks(ctx, ClaimParams{Owner: "w", Limit: 50, Now: now, LeaseUntil: now.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			complete(c, OutcomeSucceeded)
		}
		check(-round, "drain")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.groups) != 0 || len(s.tgroups) != 0 || len(s.debounce) != 0 || len(s.byToken) != 0 {
		t.Fatalf("left behind: %d groups, %d task groups, %d debounce entries, %d tokens", len(s.groups), len(s.tgroups), len(s.debounce), len(s.byToken))
	}
	for _, r := range s.runs {
		if !r.State.Finished() {
			t.Fatalf("run %s unfinished: %s", r.ID, r.State)
		}
	}
}
