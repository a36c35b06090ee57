package batutasqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// The adapter's own tests of the durable waits and operations (migration
// 0004); the shared cases are in batutatest's Store suite.

func getRun(t *testing.T, s batuta.Store, id string) *batuta.Run {
	t.Helper()
	r, err := s.GetRun(context.Background(), id)
	require.NoError(t, err)
	return r
}

// waitClaim completes claim c with OutcomeWait.
func waitClaim(t *testing.T, s batuta.Store, c batuta.Claim, at, retryAt time.Time, waitFor, child string) batuta.CompleteResult {
	t.Helper()
	res, err := s.CompleteTasks(context.Background(), []batuta.Completion{{ClaimRef: c.Ref(), Outcome: batuta.OutcomeWait,
		Attempt: c.Attempt, FinishedAt: at, RetryAt: retryAt, WaitFor: waitFor, Child: child}})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	return res[0]
}

func succeed(t *testing.T, s batuta.Store, c batuta.Claim, at time.Time, out string, consume int64) batuta.CompleteResult {
	t.Helper()
	res, err := s.CompleteTasks(context.Background(), []batuta.Completion{{ClaimRef: c.Ref(), Outcome: batuta.OutcomeSucceeded,
		Attempt: c.Attempt, StartedAt: at, FinishedAt: at, Output: json.RawMessage(out), ConsumeSignal: consume}})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	return res[0]
}

// TestWaitTimersAndNever: a task waiting with no time limit is never claimed
// by time and NextDue skips it; one waiting for a timer is due at it;
// WaitingSince is set once; WaitFor and Child are kept; no attempt is
// recorded.
func TestWaitTimersAndNever(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	_, _, err := s.CreateRun(ctx, newFlowRun("wf", "never", fbase, oneTask("w")))
	require.NoError(t, err)
	timerRun := newFlowRun("wf", "timer", fbase.Add(time.Millisecond), oneTask("w"))
	_, _, err = s.CreateRun(ctx, timerRun)
	require.NoError(t, err)
	cs := claimAt(t, s, fbase, 10)
	require.Len(t, cs, 2)
	for _, c := range cs {
		require.True(t, c.WaitingSince.IsZero())
	}
	t1 := fbase.Add(time.Second)
	waitClaim(t, s, cs[0], t1, time.Time{}, "signal go", "")
	waitClaim(t, s, cs[1], t1, fbase.Add(time.Hour), "timer", "")

	never := getRun(t, s, cs[0].RunID)
	w := never.Task("w")
	require.Equal(t, batuta.TaskPending, w.State)
	require.True(t, w.WaitingSince.Equal(t1), "WaitingSince %v", w.WaitingSince)
	require.Equal(t, "signal go", w.WaitingFor)
	require.True(t, w.NotBefore.IsZero(), "no time limit: NotBefore %v", w.NotBefore)
	require.Empty(t, w.Attempts)
	timer := getRun(t, s, cs[1].RunID).Task("w")
	require.True(t, timer.NotBefore.Equal(fbase.Add(time.Hour)))

	due, err := s.NextDue(ctx, []string{"wf"}, t1)
	require.NoError(t, err)
	require.True(t, due.Equal(fbase.Add(time.Hour)), "NextDue %v", due)
	due, err = s.NextDue(ctx, nil, fbase.Add(2*time.Hour))
	require.NoError(t, err)
	require.True(t, due.IsZero(), "NextDue past the timer: %v (the never-due task must not count)", due)

	require.Empty(t, claimAt(t, s, fbase.Add(59*time.Minute), 10))
	cs = claimAt(t, s, fbase.Add(100*365*24*time.Hour), 10)
	require.Len(t, cs, 1, "only the timer comes due, even a century later")
	require.Equal(t, timerRun.ID, cs[0].RunID)
	require.True(t, cs[0].WaitingSince.Equal(t1))
	require.Equal(t, 1, cs[0].Attempt, "a wait spends no attempt")
	// Waiting again keeps the first WaitingSince and the child.
	waitClaim(t, s, cs[0], fbase.Add(2*time.Hour), time.Time{}, "run c1", "c1")
	tr := getRun(t, s, cs[0].RunID).Task("w")
	require.True(t, tr.WaitingSince.Equal(t1))
	require.Equal(t, "run c1", tr.WaitingFor)
	require.Equal(t, "c1", tr.Child)
}

// TestSignals: SendSignal's three rules, Claim.Signal, ConsumeSignal, the
// buffer bound, and a signal sent while the task was claimed making its wait
// due at once.
func TestSignals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	specs := []batuta.TaskSpec{{Name: "a"}, {Name: "pay", Deps: []int{0}, Signal: "paid"}, {Name: "z", Deps: []int{1}}}
	run := newFlowRun("wf", "e1", fbase, specs)
	_, _, err := s.CreateRun(ctx, run)
	require.NoError(t, err)

	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: "nope", Name: "paid"})
	require.ErrorIs(t, err, batuta.ErrRunNotFound)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "other"})
	require.ErrorIs(t, err, batuta.ErrNoWaiter)

	// Before the task reaches its wait: buffered, bounded.
	res, err := s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "paid", Data: json.RawMessage(`{"n":1}`), SentAt: fbase, MaxBuffered: 2})
	require.NoError(t, err)
	require.Equal(t, batuta.SignalResult{Task: "pay"}, res)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "paid", Data: json.RawMessage(`{"n":2}`), SentAt: fbase, MaxBuffered: 2})
	require.NoError(t, err)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "paid", Data: json.RawMessage(`{"n":3}`), SentAt: fbase, MaxBuffered: 2})
	require.ErrorIs(t, err, batuta.ErrSignalBufferFull)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "paid", Data: json.RawMessage(`{bad`)})
	require.ErrorIs(t, err, batuta.ErrInvalidPayload)

	cs := claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1)
	require.Nil(t, cs[0].Signal, "a task without TaskSpec.Signal gets none")
	succeed(t, s, cs[0], fbase, `1`, 0)
	cs = claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1)
	require.NotNil(t, cs[0].Signal)
	require.JSONEq(t, `{"n":1}`, string(cs[0].Signal.Data.(json.RawMessage)), "the oldest signal")
	require.Equal(t, "paid", cs[0].Signal.Name)
	require.True(t, cs[0].Signal.SentAt.Equal(fbase))
	first := cs[0].Signal.Seq
	// A stale completion consumes nothing.
	stale := cs[0]
	stale.Token++
	bad, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: stale.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1,
		FinishedAt: fbase, ConsumeSignal: first}})
	require.NoError(t, err)
	require.ErrorIs(t, bad[0].Err, batuta.ErrLeaseLost)
	var n int
	require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM batuta_signals WHERE run_id = ?`, run.ID).Scan(&n))
	require.Equal(t, 2, n)
	// The task consumes the signal and waits for another; one is still
	// buffered, so it is due at once.
	res2, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeWait, Attempt: 1,
		FinishedAt: fbase, WaitFor: "signal paid", ConsumeSignal: first}})
	require.NoError(t, err)
	require.NoError(t, res2[0].Err)
	require.Zero(t, res2[0].Ready, "Ready counts dependents")
	cs = claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1, "due at once")
	require.JSONEq(t, `{"n":2}`, string(cs[0].Signal.Data.(json.RawMessage)))
	require.Greater(t, cs[0].Signal.Seq, first)
	// A signal arriving while the task is claimed is buffered; the wait
	// that follows is due at once.
	res, err = s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "paid", Data: json.RawMessage(`{"n":4}`), SentAt: fbase})
	require.NoError(t, err)
	require.False(t, res.Delivered)
	waitClaim(t, s, cs[0], fbase, time.Time{}, "signal paid", "")
	cs = claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1)
	require.JSONEq(t, `{"n":2}`, string(cs[0].Signal.Data.(json.RawMessage)), "the older signal is still first: it was not consumed")
	// Consume it and wait with none buffered but the fourth... consume both
	// by waiting twice.
	res2, err = s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeWait, Attempt: 1,
		FinishedAt: fbase, ConsumeSignal: cs[0].Signal.Seq}})
	require.NoError(t, err)
	require.NoError(t, res2[0].Err)
	cs = claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1, "due at once")
	require.JSONEq(t, `{"n":4}`, string(cs[0].Signal.Data.(json.RawMessage)))
	res2, err = s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: cs[0].Ref(), Outcome: batuta.OutcomeWait, Attempt: 1,
		FinishedAt: fbase, ConsumeSignal: cs[0].Signal.Seq}})
	require.NoError(t, err)
	require.NoError(t, res2[0].Err)
	require.Empty(t, claimAt(t, s, fbase.Add(time.Hour), 10), "nothing buffered: the wait holds")

	// Now it waits: a signal completes it at once with its data.
	res, err = s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "paid", Data: json.RawMessage(`{"n":5}`), SentAt: fbase.Add(time.Minute)})
	require.NoError(t, err)
	require.Equal(t, batuta.SignalResult{Delivered: true, Task: "pay", Ready: 1}, res)
	r := getRun(t, s, run.ID)
	pay := r.Task("pay")
	require.Equal(t, batuta.TaskSucceeded, pay.State)
	require.JSONEq(t, `{"n":5}`, string(pay.Output.(json.RawMessage)))
	require.Empty(t, pay.Attempts)
	require.False(t, pay.WaitingSince.IsZero(), "WaitingSince is kept")
	require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM batuta_signals WHERE run_id = ?`, run.ID).Scan(&n))
	require.Zero(t, n)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "paid"})
	require.ErrorIs(t, err, batuta.ErrNoWaiter, "the task finished")

	cs = claimAt(t, s, fbase.Add(time.Minute), 10)
	require.Len(t, cs, 1)
	require.Equal(t, "z", cs[0].Task)
	require.JSONEq(t, `{"n":5}`, string(cs[0].Upstream[0].Output.(json.RawMessage)))
	require.Equal(t, batuta.RunSucceeded, succeed(t, s, cs[0], fbase.Add(time.Minute), `1`, 0).RunFinished)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "paid"})
	require.ErrorIs(t, err, batuta.ErrNoWaiter, "a finished run")
}

// TestSignalFinishesRun: a delivery that completes the last task finishes
// the run and says so.
func TestSignalFinishesRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	run := newFlowRun("wf", "e", fbase, []batuta.TaskSpec{{Name: "w", Signal: "go"}})
	_, _, err := s.CreateRun(ctx, run)
	require.NoError(t, err)
	cs := claimAt(t, s, fbase, 1)
	waitClaim(t, s, cs[0], fbase, fbase.Add(time.Hour), "signal go", "")
	res, err := s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "go", SentAt: fbase.Add(time.Second)})
	require.NoError(t, err)
	require.Equal(t, batuta.SignalResult{Delivered: true, Task: "w", RunFinished: batuta.RunSucceeded}, res)
	r := getRun(t, s, run.ID)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.True(t, r.FinishedAt.Equal(fbase.Add(time.Second)))
	checkFlowCounters(t, s.db)
}

func childRun(parent, task, ev string, at time.Time, tasks []batuta.TaskSpec) batuta.NewRun {
	r := newFlowRun("child", ev, at, tasks)
	r.Parent = &batuta.RunLink{RunID: parent, Task: task}
	return r
}

// TestChildRunsWakeParent: the parent's waiting task becomes due when its
// last unfinished child finishes, whichever way: a completion, CancelRun, a
// rescue that fails it; and at once if the children finished while it was
// claimed. Run.Parent and TaskRun.Child link both ways; ListRuns finds the
// children.
func TestChildRunsWakeParent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	parent := newFlowRun("parent", "p", fbase, oneTask("spawn"))
	_, _, err := s.CreateRun(ctx, parent)
	require.NoError(t, err)
	cs := claimAt(t, s, fbase, 1, "parent")
	require.Len(t, cs, 1)
	c1 := childRun(parent.ID, "spawn", "c1", fbase, oneTask("x"))
	c2 := childRun(parent.ID, "spawn", "c2", fbase, oneTask("x"))
	c3 := childRun(parent.ID, "spawn", "c3", fbase, oneTask("x"))
	_, err = s.CreateRuns(ctx, []batuta.NewRun{c1, c2, c3})
	require.NoError(t, err)
	waitClaim(t, s, cs[0], fbase, time.Time{}, "3 runs", c1.ID)
	p := getRun(t, s, parent.ID)
	require.Equal(t, c1.ID, p.Task("spawn").Child)
	ch := getRun(t, s, c1.ID)
	require.Equal(t, &batuta.RunLink{RunID: parent.ID, Task: "spawn"}, ch.Parent)
	kids, err := s.ListRuns(ctx, batuta.RunFilter{Parent: parent.ID, ParentTask: "spawn", Ascending: true})
	require.NoError(t, err)
	require.Len(t, kids, 3)

	// c1 succeeds, c2 is canceled: c3 is still unfinished.
	cs = claimAt(t, s, fbase, 10, "child")
	require.Len(t, cs, 3)
	byRun := map[string]batuta.Claim{}
	for _, c := range cs {
		byRun[c.RunID] = c
	}
	succeed(t, s, byRun[c1.ID], fbase, `1`, 0)
	_, err = s.CancelRun(ctx, c2.ID, "stop", fbase)
	require.NoError(t, err)
	completeAll(t, s, []batuta.Claim{byRun[c2.ID]}, batuta.OutcomeCanceled, fbase)
	require.Empty(t, claimAt(t, s, fbase.Add(time.Hour), 10, "parent"), "c3 still runs")
	// c3's lease expires and the rescue fails it: the parent wakes.
	fails := fbase.Add(3 * time.Minute)
	_, failed, err := s.RescueExpired(ctx, fails, 0)
	require.NoError(t, err)
	require.Equal(t, 1, failed)
	require.Equal(t, batuta.RunFailed, getRun(t, s, c3.ID).State)
	p = getRun(t, s, parent.ID)
	require.True(t, p.Task("spawn").NotBefore.Equal(fails), "NotBefore %v", p.Task("spawn").NotBefore)
	cs = claimAt(t, s, fails, 10, "parent")
	require.Len(t, cs, 1)
	require.Equal(t, "spawn", cs[0].Task)

	// A child that finished while the parent task was claimed: the wait
	// that follows is due at once.
	c4 := childRun(parent.ID, "spawn", "c4", fails, oneTask("x"))
	_, _, err = s.CreateRun(ctx, c4)
	require.NoError(t, err)
	_, err = s.CancelRun(ctx, c4.ID, "", fails)
	require.NoError(t, err)
	waitClaim(t, s, cs[0], fails, time.Time{}, "runs", "")
	cs = claimAt(t, s, fails, 10, "parent")
	require.Len(t, cs, 1)
	require.Equal(t, c1.ID, getRun(t, s, parent.ID).Task("spawn").Child, "Child is kept")
	checkFlowCounters(t, s.db)
}

// TestCancelCascadesToChildren: CancelRun cancels the unfinished child runs,
// recursively, in its transaction.
func TestCancelCascadesToChildren(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	top := newFlowRun("top", "t", fbase, oneTask("a"))
	mid := childRun(top.ID, "a", "m", fbase, oneTask("b"))
	leaf := childRun(mid.ID, "b", "l", fbase, oneTask("c"))
	done := childRun(top.ID, "a", "d", fbase, oneTask("x"))
	other := newFlowRun("top", "o", fbase, oneTask("a"))
	_, err := s.CreateRuns(ctx, []batuta.NewRun{top, mid, leaf, done, other})
	require.NoError(t, err)
	_, err = s.CancelRun(ctx, done.ID, "early", fbase)
	require.NoError(t, err)
	ok, err := s.CancelRun(ctx, top.ID, "stop all", fbase.Add(time.Second))
	require.NoError(t, err)
	require.True(t, ok)
	for _, id := range []string{top.ID, mid.ID, leaf.ID} {
		r := getRun(t, s, id)
		require.Equal(t, batuta.RunCanceled, r.State, id)
	}
	require.Equal(t, "early", getRun(t, s, done.ID).Error, "a finished child is left alone")
	require.Equal(t, batuta.RunPending, getRun(t, s, other.ID).State)
	checkFlowCounters(t, s.db)
}

// TestRetryRun: a failed run reopens from its failed task, keeping the
// outputs and attempts of the rest; From forks a succeeded run; the refusals.
func TestRetryRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	specs := []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{1}}, {Name: "side", Deps: []int{0}}}
	run := newFlowRun("wf", "e", fbase, specs)
	_, _, err := s.CreateRun(ctx, run)
	require.NoError(t, err)
	_, err = s.RetryRun(ctx, run.ID, batuta.RetryParams{Now: fbase})
	require.ErrorIs(t, err, batuta.ErrNotRetryable, "unfinished")
	_, err = s.RetryRun(ctx, "nope", batuta.RetryParams{Now: fbase})
	require.ErrorIs(t, err, batuta.ErrRunNotFound)

	cs := claimAt(t, s, fbase, 10)
	succeed(t, s, cs[0], fbase, `"A"`, 0)
	cs = claimAt(t, s, fbase, 10)
	require.Len(t, cs, 2)
	for _, c := range cs {
		if c.Task == "b" {
			completeAll(t, s, []batuta.Claim{c}, batuta.OutcomeFailed, fbase)
		} else {
			succeed(t, s, c, fbase, `"S"`, 0)
		}
	}
	cs = claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1)
	require.Equal(t, batuta.RunFailed, completeAll(t, s, cs, batuta.OutcomeUpstreamFailed, fbase)[0].RunFinished)

	_, err = s.RetryRun(ctx, run.ID, batuta.RetryParams{Now: fbase, From: "nope"})
	require.ErrorIs(t, err, batuta.ErrNotRetryable)
	t2 := fbase.Add(time.Hour)
	res, err := s.RetryRun(ctx, run.ID, batuta.RetryParams{Now: t2, Deadline: t2.Add(time.Hour)})
	require.NoError(t, err)
	require.Equal(t, []string{"b", "c"}, res.Reset)
	r := getRun(t, s, run.ID)
	require.Equal(t, batuta.RunPending, r.State)
	require.Equal(t, 1, r.Retries)
	require.Empty(t, r.Error)
	require.True(t, r.FinishedAt.IsZero())
	require.True(t, r.Deadline.Equal(t2.Add(time.Hour)))
	require.JSONEq(t, `"A"`, string(r.Task("a").Output.(json.RawMessage)))
	require.Equal(t, batuta.TaskPending, r.Task("b").State)
	require.Len(t, r.Task("b").Attempts, 1, "old attempts kept")
	require.True(t, r.Task("b").NotBefore.IsZero(), "due at once")
	require.Empty(t, r.Task("c").Error)
	checkFlowCounters(t, s.db)

	cs = claimAt(t, s, t2, 10)
	require.Len(t, cs, 1)
	require.Equal(t, "b", cs[0].Task)
	require.Equal(t, 1, cs[0].Attempt, "a fresh budget")
	require.JSONEq(t, `"A"`, string(cs[0].Upstream[0].Output.(json.RawMessage)))
	succeed(t, s, cs[0], t2, `"B"`, 0)
	cs = claimAt(t, s, t2, 10)
	require.Len(t, cs, 1)
	require.Equal(t, batuta.RunSucceeded, succeed(t, s, cs[0], t2, `"C"`, 0).RunFinished)
	r = getRun(t, s, run.ID)
	require.Len(t, r.Task("b").Attempts, 2)
	require.Equal(t, 1, r.Task("b").Attempts[1].Number)

	_, err = s.RetryRun(ctx, run.ID, batuta.RetryParams{Now: t2})
	require.ErrorIs(t, err, batuta.ErrNotRetryable, "succeeded")
	res, err = s.RetryRun(ctx, run.ID, batuta.RetryParams{Now: t2, From: "a"})
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b", "c", "side"}, res.Reset)
	r = getRun(t, s, run.ID)
	require.Equal(t, 2, r.Retries)
	cs = claimAt(t, s, t2, 10)
	require.Len(t, cs, 1, "only a: the rest wait for it")
	require.Equal(t, "a", cs[0].Task)
	checkFlowCounters(t, s.db)
}

// TestRetryRunRejoinsQueue: a retried run of a ConcurrencyQueue group waits
// for room again.
func TestRetryRunRejoinsQueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	k := &batuta.ConcurrencySpec{Key: "g", Max: 1}
	r1 := newFlowRun("wf", "1", fbase, oneTask("x"))
	r1.Concurrency = k
	_, _, err := s.CreateRun(ctx, r1)
	require.NoError(t, err)
	cs := claimAt(t, s, fbase, 10)
	completeAll(t, s, cs, batuta.OutcomeFailed, fbase)
	r2 := newFlowRun("wf", "2", fbase.Add(time.Second), oneTask("x"))
	r2.Concurrency = k
	_, _, err = s.CreateRun(ctx, r2)
	require.NoError(t, err)
	cs = claimAt(t, s, fbase.Add(time.Second), 10)
	require.Len(t, cs, 1)
	_, err = s.RetryRun(ctx, r1.ID, batuta.RetryParams{Now: fbase.Add(time.Second)})
	require.NoError(t, err)
	checkFlowCounters(t, s.db)
	require.Empty(t, claimAt(t, s, fbase.Add(time.Second), 10), "the group is full")
	succeed(t, s, cs[0], fbase.Add(time.Second), `1`, 0)
	cs = claimAt(t, s, fbase.Add(time.Second), 10)
	require.Len(t, cs, 1)
	require.Equal(t, r1.ID, cs[0].RunID)
	checkFlowCounters(t, s.db)
}

// TestWorkflowStats counts finished runs of the window by state with their
// duration percentiles, and unfinished runs by running, pending (due) and
// waiting (a start time ahead, or every unfinished task waiting).
func TestWorkflowStats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	var runs []batuta.NewRun
	for i := 0; i < 10; i++ {
		runs = append(runs, newFlowRun("a", fmt.Sprint(i), fbase, oneTask("x")))
	}
	delayed := newFlowRun("a", "delayed", fbase, oneTask("x"))
	delayed.StartAt = fbase.Add(time.Hour)
	runs = append(runs, delayed, newFlowRun("b", "w", fbase, oneTask("x")), newFlowRun("b", "r", fbase, oneTask("x")))
	_, err := s.CreateRuns(ctx, runs)
	require.NoError(t, err)
	cs := claimAt(t, s, fbase, 100)
	require.Len(t, cs, 12)
	i := 0
	for _, c := range cs {
		switch {
		case c.Workflow == "b" && strings.Contains(c.RunID, "-w-"):
			waitClaim(t, s, c, fbase, time.Time{}, "signal", "")
		case c.Workflow == "b":
		case i < 8: // durations 1s..8s
			i++
			at := fbase.Add(time.Duration(i) * time.Second)
			succeed(t, s, c, at, `1`, 0)
		case i == 8:
			i++
			completeAll(t, s, []batuta.Claim{c}, batuta.OutcomeFailed, fbase.Add(20*time.Second))
		default:
			// left running
		}
	}
	late := newFlowRun("a", "late", fbase.Add(time.Minute), oneTask("x"))
	_, _, err = s.CreateRun(ctx, late)
	require.NoError(t, err)
	st, err := s.WorkflowStats(ctx, fbase, fbase.Add(2*time.Minute))
	require.NoError(t, err)
	require.Len(t, st, 2)
	require.Equal(t, batuta.WorkflowStats{Workflow: "a", Succeeded: 8, Failed: 1, DurationP50: 5 * time.Second, DurationP95: 20 * time.Second,
		Running: 1, Pending: 1, Waiting: 1, OldestPending: fbase.Add(time.Minute)}, st[0])
	require.Equal(t, batuta.WorkflowStats{Workflow: "b", Running: 1, Waiting: 1}, st[1])
	st, err = s.WorkflowStats(ctx, fbase.Add(10*time.Second), fbase.Add(2*time.Minute))
	require.NoError(t, err)
	require.Equal(t, 1, st[0].Failed)
	require.Zero(t, st[0].Succeeded)

	// From indexes: the window's finished runs, the unfinished runs.
	p := queryPlan(t, s, statsFinishedSQL, 1, 2)
	require.Contains(t, p, "batuta_runs_finished", p)
	p = queryPlan(t, s, statsOpenSQL, 1)
	require.Contains(t, p, "batuta_runs_state", p)
	require.NotContains(t, p, "SCAN r\n", p)
}

// TestListRunsFilters: each RunFilter field, keyset pages in both orders,
// and the plans: every filter reads an index range, no page sorts.
func TestListRunsFilters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	var runs []batuta.NewRun
	for i := 0; i < 30; i++ {
		r := newFlowRun([]string{"a", "b"}[i%2], fmt.Sprintf("e%02d", i), fbase.Add(time.Duration(i)*time.Second), oneTask("x"))
		r.ID = fmt.Sprintf("run-%02d", i)
		r.Event.Subject = fmt.Sprintf("order-%d", i%3)
		if i >= 20 {
			r.Parent = &batuta.RunLink{RunID: "run-00", Task: []string{"x", "y"}[i%2]}
		}
		runs = append(runs, r)
	}
	_, err := s.CreateRuns(ctx, runs)
	require.NoError(t, err)
	cs := claimAt(t, s, fbase, 10) // run-00..run-09
	require.Len(t, cs, 10)
	for i, c := range cs {
		switch {
		case i < 3:
			succeed(t, s, c, fbase.Add(time.Minute), `1`, 0)
		case i < 6:
			res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: c.Ref(), Outcome: batuta.OutcomeFailed, Attempt: 1,
				StartedAt: fbase, FinishedAt: fbase, Error: fmt.Sprintf("Payment DECLINED #%d", i)}})
			require.NoError(t, err)
			require.NoError(t, res[0].Err)
		}
	}
	ids := func(f batuta.RunFilter) []string {
		t.Helper()
		rs, err := s.ListRuns(ctx, f)
		require.NoError(t, err)
		out := make([]string, len(rs))
		for i, r := range rs {
			out[i] = r.ID
		}
		return out
	}
	require.Equal(t, []string{"run-29", "run-28"}, ids(batuta.RunFilter{Limit: 2}))
	require.Equal(t, []string{"run-27", "run-26"}, ids(batuta.RunFilter{Limit: 2, After: "run-28"}))
	require.Equal(t, []string{"run-01", "run-02"}, ids(batuta.RunFilter{Limit: 2, Ascending: true, After: "run-00"}))
	require.Equal(t, []string{"run-02", "run-01", "run-00"}, ids(batuta.RunFilter{State: batuta.RunSucceeded}))
	require.Equal(t, []string{"run-05", "run-04", "run-03", "run-02"},
		ids(batuta.RunFilter{States: []batuta.RunState{batuta.RunSucceeded, batuta.RunFailed}, Limit: 4}))
	require.Equal(t, []string{"run-01", "run-00"},
		ids(batuta.RunFilter{States: []batuta.RunState{batuta.RunSucceeded, batuta.RunFailed}, After: "run-02"}))
	require.Empty(t, ids(batuta.RunFilter{State: batuta.RunPending, States: []batuta.RunState{batuta.RunFailed}}))
	require.Equal(t, []string{"run-04"}, ids(batuta.RunFilter{Workflow: "a", State: batuta.RunFailed}))
	require.Equal(t, []string{"run-07"}, ids(batuta.RunFilter{EventID: "e07"}))
	require.Equal(t, []string{"run-00", "run-03", "run-06"}, ids(batuta.RunFilter{Subject: "order-0", Ascending: true, Limit: 3}))
	require.Equal(t, []string{"run-11", "run-12"},
		ids(batuta.RunFilter{CreatedAfter: fbase.Add(11 * time.Second), CreatedBefore: fbase.Add(13 * time.Second), Ascending: true}))
	require.Equal(t, []string{"run-05", "run-04", "run-03"}, ids(batuta.RunFilter{ErrorContains: "payment declined"}))
	require.Equal(t, []string{"run-28", "run-26", "run-24", "run-22", "run-20"}, ids(batuta.RunFilter{Parent: "run-00", ParentTask: "x"}))
	require.Len(t, ids(batuta.RunFilter{Parent: "run-00"}), 10)
	require.Len(t, ids(batuta.RunFilter{Limit: 1 << 20}), 30)

	plan := func(f batuta.RunFilter) string {
		q, args, ok := listRunsQuery(f)
		require.True(t, ok)
		return queryPlan(t, s, q, args...)
	}
	for _, c := range []struct {
		f     batuta.RunFilter
		index string
	}{
		{batuta.RunFilter{After: "x"}, "sqlite_autoindex_batuta_runs_1"},
		{batuta.RunFilter{Ascending: true, After: "x"}, "sqlite_autoindex_batuta_runs_1"},
		{batuta.RunFilter{Workflow: "a", After: "x"}, "batuta_runs_workflow"},
		{batuta.RunFilter{State: batuta.RunFailed, After: "x"}, "batuta_runs_state"},
		{batuta.RunFilter{States: []batuta.RunState{batuta.RunFailed, batuta.RunCanceled}, After: "x"}, "batuta_runs_state"},
		{batuta.RunFilter{Workflow: "a", State: batuta.RunFailed, After: "x"}, "INDEX batuta_runs_"},
		{batuta.RunFilter{EventID: "e", After: "x"}, "batuta_runs_event_id"},
		{batuta.RunFilter{Subject: "s", After: "x"}, "batuta_runs_subject"},
		{batuta.RunFilter{Parent: "p", ParentTask: "t", After: "x"}, "batuta_runs_parent"},
		{batuta.RunFilter{Parent: "p", After: "x"}, "batuta_runs_parent_any"},
		{batuta.RunFilter{ErrorContains: "x", CreatedAfter: fbase, After: "x"}, "sqlite_autoindex_batuta_runs_1"},
	} {
		p := plan(c.f)
		require.Contains(t, p, c.index, "plan of %+v:\n%s", c.f, p)
		for _, line := range strings.Split(p, "\n") {
			if strings.HasPrefix(line, "SCAN batuta_runs") && !strings.Contains(line, "INDEX") {
				t.Errorf("plan of %+v scans the table:\n%s", c.f, p)
			}
		}
		if len(c.f.States) < 2 {
			require.NotContains(t, p, "TEMP B-TREE", "plan of %+v sorts:\n%s", c.f, p)
		}
	}
}

// queryPlan returns SQLite's plan of q, one line per step.
func queryPlan(t *testing.T, s *Store, q string, args ...any) string {
	t.Helper()
	rows, err := s.db.Query("EXPLAIN QUERY PLAN "+q, args...)
	require.NoError(t, err)
	defer func() { _ = rows.Close() }()
	var b strings.Builder
	for rows.Next() {
		var id, parent, notused int
		var detail string
		require.NoError(t, rows.Scan(&id, &parent, &notused, &detail))
		b.WriteString(detail + "\n")
	}
	require.NoError(t, rows.Err())
	return b.String()
}

// TestPruneDeletesSignals: signals are deleted with their run.
func TestPruneDeletesSignals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	run := newFlowRun("wf", "e", fbase, []batuta.TaskSpec{{Name: "a"}, {Name: "w", Deps: []int{0}, Signal: "go"}})
	_, _, err := s.CreateRun(ctx, run)
	require.NoError(t, err)
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "go", SentAt: fbase})
	require.NoError(t, err)
	_, err = s.CancelRun(ctx, run.ID, "", fbase)
	require.NoError(t, err)
	n, err := s.Prune(ctx, batuta.PrunePolicy{Before: fbase.Add(time.Hour)})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	var left int
	require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM batuta_signals`).Scan(&left))
	require.Zero(t, left)
}

// TestWaitsMigrateFromVersion3: migration 0004 upgrades a file an older
// build left: its runs read back with no parent, retry or wait, are listed
// by the new filters, and go on (a task of them can wait and be retried).
func TestWaitsMigrateFromVersion3(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v3.db")
	db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	require.NoError(t, migrateUpTo(ctx, conn, quietLogger(), 3))
	require.NoError(t, conn.Close())
	_, err = db.ExecContext(ctx, `INSERT INTO batuta_runs (id, workflow, event_id, event, state, created_at, unfinished_tasks)
    VALUES ('r1', 'wf', 'e1', '{"id":"e1","subject":"order-7"}', 'pending', ?, 1)`, fbase.UnixNano())
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `INSERT INTO batuta_tasks (run_id, idx, name, workflow, state, pending_deps, due_at)
    VALUES ('r1', 0, 'a', 'wf', 'pending', 0, ?)`, fbase.Add(-newTaskLead).UnixNano())
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `UPDATE batuta_counters SET value = 1 WHERE name = 'active_runs'`)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	s, err := Open(ctx, path, Config{Logger: quietLogger()})
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	r := getRun(t, s, "r1")
	require.Nil(t, r.Parent)
	require.Zero(t, r.Retries)
	require.True(t, r.Task("a").WaitingSince.IsZero())
	rs, err := s.ListRuns(ctx, batuta.RunFilter{Subject: "order-7", State: batuta.RunPending})
	require.NoError(t, err)
	require.Len(t, rs, 1)
	cs := claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1)
	require.Nil(t, cs[0].Signal)
	waitClaim(t, s, cs[0], fbase, fbase.Add(time.Minute), "timer", "")
	_, err = s.SendSignal(ctx, batuta.SignalSend{RunID: "r1", Name: "go"})
	require.ErrorIs(t, err, batuta.ErrNoWaiter)
	cs = claimAt(t, s, fbase.Add(time.Minute), 10)
	require.Len(t, cs, 1)
	completeAll(t, s, cs, batuta.OutcomeFailed, fbase.Add(time.Minute))
	res, err := s.RetryRun(ctx, "r1", batuta.RetryParams{Now: fbase.Add(time.Hour)})
	require.NoError(t, err)
	require.Equal(t, []string{"a"}, res.Reset)
	checkFlowCounters(t, s.db)
}

// TestWakesSignalWork: what makes a task due without a claim (a signal's
// delivery, the end of a parent task's last child, a retry) signals
// WorkAvailable after its commit.
func TestWakesSignalWork(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	drain := func() {
		select {
		case <-s.WorkAvailable():
		default:
		}
	}
	signalled := func(what string) {
		t.Helper()
		select {
		case <-s.WorkAvailable():
		default:
			t.Fatalf("%s did not signal WorkAvailable", what)
		}
	}
	run := newFlowRun("wf", "e", fbase, []batuta.TaskSpec{{Name: "w", Signal: "go"}, {Name: "z", Deps: []int{0}}})
	_, _, err := s.CreateRun(ctx, run)
	require.NoError(t, err)
	cs := claimAt(t, s, fbase, 1)
	waitClaim(t, s, cs[0], fbase, time.Time{}, "signal go", "")
	drain()
	res, err := s.SendSignal(ctx, batuta.SignalSend{RunID: run.ID, Name: "go", SentAt: fbase})
	require.NoError(t, err)
	require.Equal(t, 1, res.Ready)
	signalled("a delivery")

	parent := newFlowRun("p", "p", fbase, oneTask("spawn"))
	_, _, err = s.CreateRun(ctx, parent)
	require.NoError(t, err)
	cs = claimAt(t, s, fbase, 1, "p")
	kid := childRun(parent.ID, "spawn", "k", fbase, oneTask("x"))
	_, _, err = s.CreateRun(ctx, kid)
	require.NoError(t, err)
	waitClaim(t, s, cs[0], fbase, time.Time{}, "run", kid.ID)
	drain()
	_, err = s.CancelRun(ctx, kid.ID, "", fbase)
	require.NoError(t, err)
	signalled("the end of the last child")

	cs = claimAt(t, s, fbase, 1, "p")
	require.Len(t, cs, 1)
	completeAll(t, s, cs, batuta.OutcomeFailed, fbase)
	drain()
	_, err = s.RetryRun(ctx, parent.ID, batuta.RetryParams{Now: fbase})
	require.NoError(t, err)
	signalled("a retry")
}
