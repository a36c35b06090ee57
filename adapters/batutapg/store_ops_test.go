package batutapg

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// Focused tests of the waits and operations contract on PostgreSQL (the
// shared cases are in batutatest's Store suite).

// claimOne claims the only ready task at now (failing if there is not
// exactly one).
func claimOne(t *testing.T, s *Store, now time.Time) batuta.Claim {
	t.Helper()
	cs, err := s.ClaimTasks(testCtx(t), batuta.ClaimParams{Owner: "w", Limit: 10, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, cs, 1, "claimable tasks at %v", now)
	return cs[0]
}

// claimNone asserts nothing is claimable at now.
func claimNone(t *testing.T, s *Store, now time.Time) {
	t.Helper()
	cs, err := s.ClaimTasks(testCtx(t), batuta.ClaimParams{Owner: "w", Limit: 10, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Empty(t, cs, "claimable tasks at %v", now)
}

// complete records c and fails on any error.
func complete(t *testing.T, s *Store, c batuta.Completion) batuta.CompleteResult {
	t.Helper()
	res, err := s.CompleteTasks(testCtx(t), []batuta.Completion{c})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	return res[0]
}

func waitDone(c batuta.Claim, at, retryAt time.Time, what string) batuta.Completion {
	return batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeWait, Attempt: c.Attempt,
		StartedAt: at, FinishedAt: at, RetryAt: retryAt, WaitFor: what}
}

func succeed(c batuta.Claim, at time.Time, out string) batuta.Completion {
	return batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: c.Attempt,
		StartedAt: at, FinishedAt: at, Output: json.RawMessage(out)}
}

// TestWaitTimer: a wait with a time is due then (NotBefore, NextDue), a
// wait without one is never due by time, records no attempt, and keeps
// its first WaitingSince.
func TestWaitTimer(t *testing.T) {
	t.Parallel()
	s := newTestStore(t, storeTestPool(t, 4), Config{DisableListen: true, Logger: quiet()})
	ctx := testCtx(t)
	now := time.Now().Truncate(time.Millisecond)
	id, _, err := s.CreateRun(ctx, newRunFor("wf", "e", now, batuta.TaskSpec{Name: "a"}, batuta.TaskSpec{Name: "b", Deps: []int{0}}))
	require.NoError(t, err)

	c := claimOne(t, s, now)
	require.True(t, c.WaitingSince.IsZero())
	due := now.Add(time.Hour)
	complete(t, s, waitDone(c, now, due, "timer"))
	r, err := s.GetRun(ctx, id)
	require.NoError(t, err)
	a := r.Task("a")
	require.Equal(t, batuta.TaskPending, a.State)
	require.Empty(t, a.Attempts, "a wait records no attempt")
	require.True(t, a.NotBefore.Equal(due), "NotBefore %v", a.NotBefore)
	require.True(t, a.WaitingSince.Equal(now), "WaitingSince %v", a.WaitingSince)
	require.Equal(t, "timer", a.WaitingFor)
	next, err := s.NextDue(ctx, nil, now)
	require.NoError(t, err)
	require.True(t, next.Equal(due), "NextDue %v", next)
	claimNone(t, s, now.Add(time.Minute))

	later := due.Add(time.Second)
	c = claimOne(t, s, later)
	require.Equal(t, "a", c.Task)
	require.Equal(t, 1, c.Attempt, "the wait spent no attempt")
	require.True(t, c.WaitingSince.Equal(now))
	complete(t, s, waitDone(c, later, time.Time{}, "signal never"))
	next, err = s.NextDue(ctx, nil, later)
	require.NoError(t, err)
	require.True(t, next.IsZero(), "a wait with no time is never due: NextDue %v", next)
	claimNone(t, s, later.Add(1000*time.Hour))
	r, err = s.GetRun(ctx, id)
	require.NoError(t, err)
	a = r.Task("a")
	require.True(t, a.NotBefore.IsZero())
	require.True(t, a.WaitingSince.Equal(now), "kept from the first wait")
	require.Equal(t, "signal never", a.WaitingFor)
	require.Equal(t, batuta.RunRunning, r.State)
	st, err := s.WorkflowStats(ctx, now.Add(-time.Hour), later)
	require.NoError(t, err)
	require.Equal(t, []batuta.WorkflowStats{{Workflow: "wf", Waiting: 1}}, st)
}

// TestSignals: buffered before the wait (the claim carries the oldest, a
// completion consumes it), delivered to a waiting task (completing it,
// counting dependents down, finishing the run), buffered while the task
// is claimed (its wait is then due at once), bounded, and refused once
// nobody can take it.
func TestSignals(t *testing.T) {
	t.Parallel()
	s := newTestStore(t, storeTestPool(t, 4), Config{DisableListen: true, Logger: quiet()})
	ctx := testCtx(t)
	now := time.Now().Truncate(time.Millisecond)
	tasks := []batuta.TaskSpec{{Name: "a", Signal: "go"}, {Name: "b", Deps: []int{0}}}
	id, _, err := s.CreateRun(ctx, newRunFor("wf", "e1", now, tasks...))
	require.NoError(t, err)

	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: "other", SentAt: now})
	require.ErrorIs(t, err, batuta.ErrNoWaiter)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: newRunID(), Name: "go", SentAt: now})
	require.ErrorIs(t, err, batuta.ErrRunNotFound)
	for i := 1; i <= 2; i++ {
		res, err := s.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: "go", Data: json.RawMessage(fmt.Sprint(i)), SentAt: now, MaxBuffered: 2})
		require.NoError(t, err)
		require.Equal(t, batuta.SignalResult{Task: "a"}, res)
	}
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: "go", SentAt: now, MaxBuffered: 2})
	require.ErrorIs(t, err, batuta.ErrSignalBufferFull)

	c := claimOne(t, s, now)
	require.NotNil(t, c.Signal)
	require.Equal(t, "go", c.Signal.Name)
	require.Equal(t, json.RawMessage("1"), c.Signal.Data)
	require.True(t, c.Signal.SentAt.Equal(now))
	// A completion that is fenced off consumes nothing.
	bad := succeed(c, now, "1")
	bad.Token++
	bad.ConsumeSignal = c.Signal.Seq
	res, err := s.CompleteTasks(ctx, []batuta.Completion{bad})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, batuta.ErrLeaseLost)
	// Consumed with a wait: the second signal is still buffered, so the
	// wait is due at once and the next claim carries it.
	w := waitDone(c, now, time.Time{}, "signal go")
	w.ConsumeSignal = c.Signal.Seq
	complete(t, s, w)
	c = claimOne(t, s, now)
	require.NotNil(t, c.Signal)
	require.Equal(t, json.RawMessage("2"), c.Signal.Data)
	w = waitDone(c, now, time.Time{}, "signal go")
	w.ConsumeSignal = c.Signal.Seq
	complete(t, s, w)
	claimNone(t, s, now.Add(time.Hour))

	// Delivered to the waiting task.
	res2, err := s.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: "go", Data: json.RawMessage(`{"x":3}`), SentAt: now.Add(time.Second)})
	require.NoError(t, err)
	require.Equal(t, batuta.SignalResult{Delivered: true, Task: "a", Ready: 1}, res2)
	r, err := s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.TaskSucceeded, r.Task("a").State)
	require.JSONEq(t, `{"x":3}`, string(r.Task("a").Output.(json.RawMessage)))
	require.Empty(t, r.Task("a").Attempts)
	require.Equal(t, "signal go", r.Task("a").WaitingFor)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: "go", SentAt: now})
	require.ErrorIs(t, err, batuta.ErrNoWaiter, "a is finished")
	c = claimOne(t, s, now.Add(2*time.Second))
	require.Equal(t, "b", c.Task)
	require.Equal(t, batuta.RunSucceeded, complete(t, s, succeed(c, now, "null")).RunFinished)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: id, Name: "go", SentAt: now})
	require.ErrorIs(t, err, batuta.ErrNoWaiter, "the run finished")

	// A run of one task waiting for a signal: the signal sent while it is
	// claimed is buffered, and its wait is due at once.
	id2, _, err := s.CreateRun(ctx, newRunFor("wf", "e2", now, batuta.TaskSpec{Name: "only", Signal: "s"}))
	require.NoError(t, err)
	c = claimOne(t, s, now)
	require.Nil(t, c.Signal)
	res2, err = s.SendSignal(ctx, batuta.SignalSend{RunID: id2, Name: "s", Data: json.RawMessage(`"hi"`), SentAt: now})
	require.NoError(t, err)
	require.False(t, res2.Delivered)
	complete(t, s, waitDone(c, now, now.Add(time.Hour), "signal s"))
	c = claimOne(t, s, now)
	require.NotNil(t, c.Signal)
	sc := succeed(c, now, `"hi"`)
	sc.ConsumeSignal = c.Signal.Seq
	require.Equal(t, batuta.RunSucceeded, complete(t, s, sc).RunFinished)
	var n int
	require.NoError(t, s.queryRow(ctx, "SELECT count(*) FROM "+s.schema+".signals", nil, &n))
	require.Zero(t, n, "every signal consumed")

	// Prune deletes a finished run's signals with it.
	id3, _, err := s.CreateRun(ctx, newRunFor("wf", "e3", now, batuta.TaskSpec{Name: "x", Signal: "s"}, batuta.TaskSpec{Name: "y"}))
	require.NoError(t, err)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: id3, Name: "s", SentAt: now})
	require.NoError(t, err)
	_, err = s.CancelRun(ctx, id3, "", now)
	require.NoError(t, err)
	_, err = s.Prune(ctx, batuta.PrunePolicy{Before: now.Add(time.Hour)})
	require.NoError(t, err)
	require.NoError(t, s.queryRow(ctx, "SELECT count(*) FROM "+s.schema+".signals", nil, &n))
	require.Zero(t, n, "pruned with the run")
}

// childRun returns a new run of one task whose parent is (parent, task).
func childRun(eventID string, at time.Time, parent, task string) batuta.NewRun {
	nr := newRunFor("child", eventID, at)
	nr.Parent = &batuta.RunLink{RunID: parent, Task: task}
	return nr
}

// TestChildRuns: the parent task waits for its child runs and is woken when
// the last one finishes (completion, cancel, rescue failure), or is due at
// once if they all finished while it was claimed; the runs link both ways;
// CancelRun cascades.
func TestChildRuns(t *testing.T) {
	t.Parallel()
	s := newTestStore(t, storeTestPool(t, 4), Config{DisableListen: true, Logger: quiet()})
	ctx := testCtx(t)
	now := time.Now().Truncate(time.Millisecond)
	pid, _, err := s.CreateRun(ctx, newRunFor("parent", "p", now, batuta.TaskSpec{Name: "spawn"}, batuta.TaskSpec{Name: "after", Deps: []int{0}}))
	require.NoError(t, err)
	pc := claimOne(t, s, now)
	c1, _, err := s.CreateRun(ctx, childRun("c1", now, pid, "spawn"))
	require.NoError(t, err)
	c2, _, err := s.CreateRun(ctx, childRun("c2", now, pid, "spawn"))
	require.NoError(t, err)
	w := waitDone(pc, now, time.Time{}, "2 runs")
	w.Child = c1
	complete(t, s, w)

	kids, err := s.ListRuns(ctx, batuta.RunFilter{Parent: pid, ParentTask: "spawn", Ascending: true})
	require.NoError(t, err)
	require.Len(t, kids, 2)
	require.Equal(t, c1, kids[0].ID)
	require.Equal(t, &batuta.RunLink{RunID: pid, Task: "spawn"}, kids[0].Parent)

	// c1 succeeds: c2 is still open, the parent waits on.
	at := now.Add(time.Second)
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 10, Now: at, LeaseUntil: at.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, cs, 2)
	byRun := map[string]batuta.Claim{cs[0].RunID: cs[0], cs[1].RunID: cs[1]}
	require.Equal(t, batuta.RunSucceeded, complete(t, s, succeed(byRun[c1], at, "1")).RunFinished)
	claimNone(t, s, at)
	// c2 canceled (its task is running): it finishes when its worker
	// reports, which wakes the parent task.
	_, err = s.CancelRun(ctx, c2, "", at)
	require.NoError(t, err)
	claimNone(t, s, at)
	k2 := byRun[c2]
	res := complete(t, s, batuta.Completion{ClaimRef: k2.Ref(), Outcome: batuta.OutcomeCanceled, FinishedAt: at})
	require.Equal(t, batuta.RunCanceled, res.RunFinished)
	pc = claimOne(t, s, at.Add(time.Second))
	require.Equal(t, pid, pc.RunID)
	r, err := s.GetRun(ctx, pid)
	require.NoError(t, err)
	require.Equal(t, c1, r.Task("spawn").Child)

	// All children finish while the parent task is claimed: its next
	// wait is due at once.
	c3, _, err := s.CreateRun(ctx, childRun("c3", at, pid, "spawn"))
	require.NoError(t, err)
	_, err = s.CancelRun(ctx, c3, "", at)
	require.NoError(t, err)
	complete(t, s, waitDone(pc, at, time.Time{}, "1 run"))
	pc = claimOne(t, s, at.Add(2*time.Second))
	require.Equal(t, "spawn", pc.Task)

	// A child whose task runs out of rescues fails, which wakes the parent.
	c4, _, err := s.CreateRun(ctx, childRun("c4", at, pid, "spawn"))
	require.NoError(t, err)
	complete(t, s, waitDone(pc, at, time.Time{}, "1 run"))
	t0 := time.Now()
	cs, err = s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 1, Now: t0, LeaseUntil: t0.Add(-time.Hour)})
	require.NoError(t, err)
	require.Len(t, cs, 1)
	require.Equal(t, c4, cs[0].RunID)
	_, failed, err := s.RescueExpired(ctx, time.Now(), 0)
	require.NoError(t, err)
	require.Equal(t, 1, failed)
	pc = claimOne(t, s, time.Now().Add(time.Second))
	require.Equal(t, pid, pc.RunID)

	// CancelRun of the parent cancels its open children, recursively.
	c5, _, err := s.CreateRun(ctx, childRun("c5", at, pid, "spawn"))
	require.NoError(t, err)
	gc := newRunFor("child", "g5", at, batuta.TaskSpec{Name: "t"}, batuta.TaskSpec{Name: "u", Deps: []int{0}})
	gc.Parent = &batuta.RunLink{RunID: c5, Task: "t"}
	g5, _, err := s.CreateRun(ctx, gc)
	require.NoError(t, err)
	complete(t, s, waitDone(pc, at, time.Time{}, "1 run"))
	changed, err := s.CancelRun(ctx, pid, "stop", at)
	require.NoError(t, err)
	require.True(t, changed)
	for _, id := range []string{c5, g5} {
		r, err := s.GetRun(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunCanceled, r.State, "run %s", id)
	}
	r, err = s.GetRun(ctx, pid)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, r.State)
}

// TestChildRunsFinishTogether: siblings finishing at once, each in its own
// transaction (several Stores, as several processes), wake their waiting
// parent task exactly once: none is lost.
func TestChildRunsFinishTogether(t *testing.T) {
	t.Parallel()
	stores := flowStores(t, 3)
	s := stores[0]
	ctx := testCtx(t)
	now := time.Now().Truncate(time.Millisecond)
	const parents, kidsPer = 10, 6
	for p := 0; p < parents; p++ {
		_, _, err := s.CreateRun(ctx, newRunFor("parent", fmt.Sprint("p", p), now, batuta.TaskSpec{Name: "spawn"}))
		require.NoError(t, err)
	}
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Workflows: []string{"parent"}, Limit: parents, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, cs, parents)
	for i, c := range cs {
		for k := 0; k < kidsPer; k++ {
			_, _, err := s.CreateRun(ctx, childRun(fmt.Sprintf("k%d-%d", i, k), now, c.RunID, "spawn"))
			require.NoError(t, err)
		}
		complete(t, s, waitDone(c, now, time.Time{}, "runs"))
	}
	kids, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Workflows: []string{"child"}, Limit: parents * kidsPer, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, kids, parents*kidsPer)
	var wg sync.WaitGroup
	errs := make(chan error, len(kids))
	start := make(chan struct{})
	for i, c := range kids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := stores[i%len(stores)].CompleteTasks(ctx, []batuta.Completion{succeed(c, now, "1")})
			if err == nil {
				err = res[0].Err
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	got, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Workflows: []string{"parent"}, Limit: parents + 1, Now: now.Add(time.Second), LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	require.Len(t, got, parents, "every parent woken")
}

// TestRetryRunPG: a failed run resumes from its failed task, keeping the
// succeeded one's output and every attempt; Retries counts; the run is
// pending until claimed.
func TestRetryRunPG(t *testing.T) {
	t.Parallel()
	s := newTestStore(t, storeTestPool(t, 4), Config{DisableListen: true, Logger: quiet()})
	ctx := testCtx(t)
	now := time.Now().Truncate(time.Millisecond)
	id, _, err := s.CreateRun(ctx, newRunFor("wf", "e", now, batuta.TaskSpec{Name: "a"}, batuta.TaskSpec{Name: "b", Deps: []int{0}}, batuta.TaskSpec{Name: "c", Deps: []int{1}}))
	require.NoError(t, err)
	_, err = s.RetryRun(ctx, id, batuta.RetryParams{Now: now})
	require.ErrorIs(t, err, batuta.ErrNotRetryable)
	complete(t, s, succeed(claimOne(t, s, now), now, `"A"`))
	c := claimOne(t, s, now)
	res := complete(t, s, batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeFailed, Attempt: 1, Error: "boom", StartedAt: now, FinishedAt: now})
	require.Empty(t, res.RunFinished)
	c = claimOne(t, s, now)
	require.Equal(t, batuta.RunFailed, complete(t, s, batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeUpstreamFailed, FinishedAt: now}).RunFinished)
	_, err = s.RetryRun(ctx, id, batuta.RetryParams{Now: now, From: "nope"})
	require.ErrorIs(t, err, batuta.ErrNotRetryable)
	_, err = s.RetryRun(ctx, newRunID(), batuta.RetryParams{Now: now})
	require.ErrorIs(t, err, batuta.ErrRunNotFound)

	later := now.Add(time.Second)
	rr, err := s.RetryRun(ctx, id, batuta.RetryParams{Now: later})
	require.NoError(t, err)
	require.Equal(t, []string{"b", "c"}, rr.Reset)
	r, err := s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunPending, r.State)
	require.Equal(t, 1, r.Retries)
	require.Empty(t, r.Error)
	require.False(t, r.StartedAt.IsZero(), "started_at kept")
	require.Equal(t, batuta.TaskSucceeded, r.Task("a").State)
	require.Equal(t, batuta.TaskPending, r.Task("b").State)
	require.Len(t, r.Task("b").Attempts, 1, "attempts kept")
	c = claimOne(t, s, later)
	require.Equal(t, "b", c.Task)
	require.Equal(t, 1, c.Attempt, "a fresh budget")
	require.Equal(t, json.RawMessage(`"A"`), c.Upstream[0].Output)
	complete(t, s, succeed(c, later, "1"))
	c = claimOne(t, s, later)
	require.Equal(t, batuta.RunSucceeded, complete(t, s, succeed(c, later, "1")).RunFinished)
	r, err = s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Len(t, r.Task("b").Attempts, 2)

	// From a task of a succeeded run: it and its downstream tasks.
	rr, err = s.RetryRun(ctx, id, batuta.RetryParams{Now: later.Add(time.Second), From: "b"})
	require.NoError(t, err)
	require.Equal(t, []string{"b", "c"}, rr.Reset)
	st, err := s.WorkflowStats(ctx, now.Add(-time.Hour), later.Add(time.Minute))
	require.NoError(t, err)
	require.Len(t, st, 1)
	require.Equal(t, 1, st[0].Pending)
	require.Equal(t, 0, st[0].Succeeded, "reopened: no longer finished")
}

// TestListRunsFilters: every RunFilter field, and keyset pagination both
// ways.
func TestListRunsFilters(t *testing.T) {
	t.Parallel()
	s := newTestStore(t, storeTestPool(t, 4), Config{DisableListen: true, Logger: quiet()})
	ctx := testCtx(t)
	now := time.Now().Truncate(time.Millisecond)
	var ids []string
	for i := 0; i < 25; i++ {
		nr := newRunFor(fmt.Sprint("wf", i%2), fmt.Sprint("e", i), now.Add(time.Duration(i)*time.Second))
		nr.Event.Subject = fmt.Sprint("order-", i%5)
		id, _, err := s.CreateRun(ctx, nr)
		require.NoError(t, err)
		ids = append(ids, id)
	}
	// Runs 0..4 fail (with an error to search), 5..9 succeed, 10 is
	// canceled, 11 running, the others pending.
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 12, Now: now.Add(time.Hour), LeaseUntil: now.Add(2 * time.Hour)})
	require.NoError(t, err)
	require.Len(t, cs, 12) // oldest due first: runs 0..11
	for _, c := range cs {
		i := indexOf(ids, c.RunID)
		// run i lasts (i+1) × 100ms
		fin := now.Add(time.Duration(i)*time.Second + time.Duration(i+1)*100*time.Millisecond)
		switch {
		case i <= 4:
			complete(t, s, batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeFailed, Attempt: 1, Error: "Disk 100% FULL", StartedAt: now, FinishedAt: fin})
		case i <= 9:
			complete(t, s, succeed(c, fin, "1"))
		case i == 10:
			_, err := s.CancelRun(ctx, c.RunID, "", now)
			require.NoError(t, err)
			complete(t, s, batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeCanceled, FinishedAt: fin})
		}
	}
	list := func(f batuta.RunFilter) []string {
		t.Helper()
		runs, err := s.ListRuns(ctx, f)
		require.NoError(t, err)
		var out []string
		for _, r := range runs {
			out = append(out, r.ID)
		}
		return out
	}
	pick := func(idx ...int) []string {
		var out []string
		for i := len(idx) - 1; i >= 0; i-- {
			out = append(out, ids[idx[i]])
		}
		return out
	}
	require.Equal(t, pick(0, 1, 2, 3, 4), list(batuta.RunFilter{State: batuta.RunFailed}))
	require.Equal(t, pick(0, 1, 2, 3, 4, 10), list(batuta.RunFilter{States: []batuta.RunState{batuta.RunFailed, batuta.RunCanceled}}))
	require.Equal(t, pick(1, 3), list(batuta.RunFilter{Workflow: "wf1", State: batuta.RunFailed}))
	require.Equal(t, pick(11), list(batuta.RunFilter{State: batuta.RunRunning}))
	require.Len(t, list(batuta.RunFilter{State: batuta.RunPending}), 13)
	require.Len(t, list(batuta.RunFilter{States: []batuta.RunState{batuta.RunPending, batuta.RunRunning}}), 14)
	require.Empty(t, list(batuta.RunFilter{State: batuta.RunFailed, States: []batuta.RunState{batuta.RunSucceeded}}))
	require.Equal(t, pick(7), list(batuta.RunFilter{EventID: "e7"}))
	require.Equal(t, pick(2, 7, 12, 17, 22), list(batuta.RunFilter{Subject: "order-2"}))
	require.Equal(t, pick(3, 4, 5), list(batuta.RunFilter{CreatedAfter: now.Add(3 * time.Second), CreatedBefore: now.Add(6 * time.Second)}))
	require.Equal(t, pick(0, 1, 2, 3, 4), list(batuta.RunFilter{ErrorContains: "100% full"}))
	require.Empty(t, list(batuta.RunFilter{ErrorContains: "100_%"}), "wildcards are literal")
	require.Empty(t, list(batuta.RunFilter{Parent: ids[0]}))
	_, err = s.ListRuns(ctx, batuta.RunFilter{After: "not-a-run"})
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)

	for _, asc := range []bool{false, true} {
		var all []string
		after := ""
		for {
			page := list(batuta.RunFilter{Ascending: asc, After: after, Limit: 4})
			all = append(all, page...)
			if len(page) < 4 {
				break
			}
			after = page[len(page)-1]
		}
		want := pick(seq(25)...)
		if asc {
			want = append([]string(nil), ids...)
		}
		require.Equal(t, want, all, "ascending %v", asc)
	}
	st, err := s.WorkflowStats(ctx, now, now.Add(time.Hour))
	require.NoError(t, err)
	require.Len(t, st, 2)
	require.Equal(t, batuta.WorkflowStats{Workflow: "wf0", Succeeded: 2, Failed: 3, Canceled: 1,
		DurationP50: 500 * time.Millisecond, DurationP95: 1100 * time.Millisecond, Pending: 7}, withoutOldest(st[0]))
	require.True(t, st[0].OldestPending.Equal(now.Add(12*time.Second)), "oldest pending %v", st[0].OldestPending)
	require.Equal(t, 1, st[1].Running)
}

func indexOf(xs []string, x string) int {
	for i, y := range xs {
		if y == x {
			return i
		}
	}
	return -1
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

var _ = context.Background

// withoutOldest returns w without OldestPending (compared apart: the
// time.Time locations differ).
func withoutOldest(w batuta.WorkflowStats) batuta.WorkflowStats {
	w.OldestPending = time.Time{}
	return w
}

// TestOpsMigrationUpgradesInPlace: a schema at version 4 holding a ready
// task is upgraded to 5 by New: the task is claimable, completes, and the
// snapshot and listing read the new columns' defaults.
func TestOpsMigrationUpgradesInPlace(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	schema := "batuta_up5_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema)
	ctx := testCtx(t)
	ms, err := migrations()
	require.NoError(t, err)
	var v4 []migration
	for _, m := range ms {
		if m.version <= 4 {
			v4 = append(v4, m)
		}
	}
	require.Len(t, v4, 4)
	require.NoError(t, migrate(ctx, pool, schema, v4))
	now := time.Now().UTC().Truncate(time.Microsecond)
	id := newRunID()
	_, err = pool.Exec(ctx, `INSERT INTO `+quoteIdent(schema)+`.runs (id, workflow, event_id, event, created_at, tasks_total, tasks_left)
		VALUES ($1::uuid, 'old', 'e', '{"subject":"s"}', $2, 1, 1)`, id, now)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO `+quoteIdent(schema)+`.tasks (run_id, idx, name, workflow, deps, dependents, pending_deps, solo, state, due_at)
		VALUES ($1::uuid, 0, 't', 'old', '{}', '{}', 0, true, 'pending', $2)`, id, now.Add(-time.Minute))
	require.NoError(t, err)
	s, err := New(ctx, pool, Config{Schema: schema, Logger: quiet(), DisableListen: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	runs, err := s.ListRuns(ctx, batuta.RunFilter{Subject: "s", State: batuta.RunPending})
	require.NoError(t, err)
	require.Len(t, runs, 1)
	r := runs[0]
	require.Nil(t, r.Parent)
	require.Zero(t, r.Retries)
	require.True(t, r.Tasks[0].WaitingSince.IsZero())
	require.Empty(t, r.Tasks[0].Child)
	c := claimOne(t, s, now)
	require.Nil(t, c.Signal)
	require.True(t, c.WaitingSince.IsZero())
	require.Equal(t, batuta.RunSucceeded, complete(t, s, succeed(c, now, "1")).RunFinished)
	st, err := s.WorkflowStats(ctx, now.Add(-time.Hour), now.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, []batuta.WorkflowStats{{Workflow: "old", Succeeded: 1}}, st)
}
