package batutasqlite

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// TestFlowRandomized drives the store with random operations mixing every
// flow feature (delays, priorities, Queue, CancelInProgress and
// CancelNewest groups, task groups, debounce, pause, every outcome,
// cancels, rescues, batch creates, clock jumps, reopening the file) and
// checks after each step that no Queue group has more started, unfinished
// runs than its Max, no task group more running tasks than its Max, and
// every flow counter agrees with the rows; at the end everything runs to
// completion and no flow state is left behind. (The memory store has the
// same test.) 200 seeds of 600 steps passed when it was written.
func TestFlowRandomized(t *testing.T) {
	t.Parallel()
	seeds, steps := 8, 400
	if raceEnabled {
		seeds, steps = 3, 250
	}
	for seed := 1; seed <= seeds; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			randomFlow(t, uint64(seed), steps)
		})
	}
}

func randomFlow(t *testing.T, seed uint64, steps int) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 11))
	s, path := openTemp(t)
	queueMax := map[string]int{"q0": 1, "q1": 2, "q2": 3}
	taskMax := map[string]int{"t0": 1, "t1": 2}
	now := fbase
	id := 0
	var running []batuta.Claim
	newRun := func() batuta.NewRun {
		id++
		n := 1 + rng.IntN(3)
		tasks := make([]batuta.TaskSpec, n)
		for i := range tasks {
			tasks[i].Name = fmt.Sprintf("t%d", i)
			if i > 0 && rng.IntN(2) == 0 {
				tasks[i].Deps = []int{rng.IntN(i)}
			}
			if rng.IntN(3) == 0 {
				k := fmt.Sprintf("t%d", rng.IntN(2))
				tasks[i].Concurrency = &batuta.ConcurrencySpec{Key: k, Max: taskMax[k]}
			}
		}
		nr := batuta.NewRun{ID: fmt.Sprintf("run-%06d", id), Workflow: fmt.Sprintf("wf%d", rng.IntN(2)), Tasks: tasks,
			Event: batuta.Event{ID: fmt.Sprint(rng.IntN(3 * id))}, CreatedAt: now, Priority: rng.IntN(4) - 1}
		if rng.IntN(4) == 0 {
			nr.StartAt = now.Add(time.Duration(rng.IntN(60)) * time.Second)
		}
		switch rng.IntN(6) {
		case 0, 1:
			k := fmt.Sprintf("q%d", rng.IntN(3))
			nr.Concurrency = &batuta.ConcurrencySpec{Key: k, Max: queueMax[k]}
		case 2:
			nr.Concurrency = &batuta.ConcurrencySpec{Key: "cip", Max: 1 + rng.IntN(2), Strategy: batuta.ConcurrencyCancelInProgress}
		case 3:
			nr.Concurrency = &batuta.ConcurrencySpec{Key: "cn", Max: 1, Strategy: batuta.ConcurrencyCancelNewest}
		}
		if rng.IntN(5) == 0 {
			nr.Debounce = &batuta.DebounceSpec{Key: fmt.Sprintf("d%d", rng.IntN(2)), Window: 10 * time.Second, MaxWait: 30 * time.Second}
		}
		return nr
	}
	check := func(step int, op string) {
		t.Helper()
		rows, err := s.db.Query(`SELECT concurrency_key, count(*) FROM batuta_runs
    WHERE state = 'running' AND concurrency_key IN ('q0', 'q1', 'q2') GROUP BY concurrency_key`)
		require.NoError(t, err)
		for rows.Next() {
			var k string
			var n int
			require.NoError(t, rows.Scan(&k, &n))
			require.LessOrEqual(t, n, queueMax[k], "step %d (%s): group %s: started unfinished runs over Max", step, op, k)
		}
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())
		rows, err = s.db.Query(`SELECT concurrency_key, count(*) FROM batuta_tasks
    WHERE state = 'running' AND concurrency_key IS NOT NULL GROUP BY concurrency_key`)
		require.NoError(t, err)
		for rows.Next() {
			var k string
			var n int
			require.NoError(t, rows.Scan(&k, &n))
			require.LessOrEqual(t, n, taskMax[k], "step %d (%s): task group %s: running over Max", step, op, k)
		}
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())
		checkFlowCounters(t, s.db)
	}
	complete := func(c batuta.Claim, oc batuta.Outcome) {
		comp := batuta.Completion{ClaimRef: c.Ref(), Outcome: oc, Attempt: c.Attempt, StartedAt: now, FinishedAt: now}
		switch oc {
		case batuta.OutcomeRetry, batuta.OutcomeSnooze, batuta.OutcomeDefer:
			comp.RetryAt = now.Add(time.Duration(rng.IntN(20)) * time.Second)
			comp.RateReserved = oc == batuta.OutcomeDefer && rng.IntN(2) == 0
		case batuta.OutcomeRelease, batuta.OutcomeSkipped, batuta.OutcomeCanceled, batuta.OutcomeUpstreamFailed:
			comp.StartedAt = time.Time{}
		}
		_, err := s.CompleteTasks(ctx, []batuta.Completion{comp})
		require.NoError(t, err)
	}
	outcomes := []batuta.Outcome{batuta.OutcomeSucceeded, batuta.OutcomeSucceeded, batuta.OutcomeSucceeded, batuta.OutcomeFailed,
		batuta.OutcomeRetry, batuta.OutcomeSnooze, batuta.OutcomeDefer, batuta.OutcomeRelease, batuta.OutcomeSkipped,
		batuta.OutcomeUpstreamFailed, batuta.OutcomeCanceled}
	for step := 0; step < steps; step++ {
		var op string
		switch x := rng.IntN(100); {
		case x < 20:
			op = "create"
			_, _, err := s.CreateRun(ctx, newRun())
			require.NoError(t, err)
		case x < 25:
			op = "create batch"
			batch := make([]batuta.NewRun, 1+rng.IntN(4))
			for i := range batch {
				batch[i] = newRun()
			}
			_, err := s.CreateRuns(ctx, batch)
			require.NoError(t, err)
		case x < 50:
			op = "claim"
			cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 1 + rng.IntN(5), Now: now, LeaseUntil: now.Add(time.Minute)})
			require.NoError(t, err)
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
				_, err := s.CancelRun(ctx, fmt.Sprintf("run-%06d", 1+rng.IntN(id)), "random", now)
				if err != nil {
					require.ErrorIs(t, err, batuta.ErrRunNotFound) // a duplicate's or a merged run's own ID
				}
			}
		case x < 83:
			op = "rescue"
			now = now.Add(2 * time.Minute)
			_, _, err := s.RescueExpired(ctx, now, 2)
			require.NoError(t, err)
			running = running[:0] // their leases are gone: completions would be fenced
		case x < 86:
			op = "pause"
			_, err := s.SetPaused(ctx, fmt.Sprintf("wf%d", rng.IntN(2)), rng.IntN(2) == 0)
			require.NoError(t, err)
		case x < 88:
			op = "next due"
			_, err := s.NextDue(ctx, []string{"wf0", "wf1"}, now)
			require.NoError(t, err)
		case x < 90:
			op = "reopen"
			require.NoError(t, s.Close())
			s2, err := Open(ctx, path, Config{Logger: quietLogger()})
			require.NoError(t, err)
			t.Cleanup(func() { _ = s2.Close() })
			s = s2
		default:
			op = "tick"
			now = now.Add(time.Duration(rng.IntN(10)) * time.Second)
		}
		check(step, op)
	}
	// Drain: resume, complete everything, rescue what was dropped.
	for _, wf := range []string{"wf0", "wf1"} {
		_, err := s.SetPaused(ctx, wf, false)
		require.NoError(t, err)
	}
	for _, c := range running {
		complete(c, batuta.OutcomeSucceeded)
	}
	for round := 0; ; round++ {
		var active int
		require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM batuta_runs WHERE finished_at IS NULL`).Scan(&active))
		if active == 0 {
			break
		}
		require.Less(t, round, 1000, "%d runs never finish", active)
		now = now.Add(time.Hour)
		_, _, err := s.RescueExpired(ctx, now, 1000)
		require.NoError(t, err)
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 50, Now: now, LeaseUntil: now.Add(time.Minute)})
		require.NoError(t, err)
		for _, c := range cs {
			complete(c, batuta.OutcomeSucceeded)
		}
		check(-round, "drain")
	}
	var groups, taskGroups, held int
	require.NoError(t, s.db.QueryRow(`SELECT (SELECT count(*) FROM batuta_groups), (SELECT count(*) FROM batuta_task_groups),
    (SELECT count(*) FROM batuta_tasks WHERE state = 'pending')`).Scan(&groups, &taskGroups, &held))
	require.Zero(t, groups, "groups left behind")
	require.Zero(t, taskGroups, "task groups left behind")
	require.Zero(t, held, "pending tasks left behind")
}
