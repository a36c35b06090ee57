package batutapg

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// TestCompleteInTx: a task's side effect and its success commit together
// or not at all; a stale lease writes nothing; the orchestrator's own
// completion afterwards is a no-op.
func TestCompleteInTx(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 8)
	s := newTestStore(t, pool, Config{})
	ctx := testCtx(t)
	effects := quoteQualified(s.Schema(), "effects")
	_, err := pool.Exec(ctx, "CREATE TABLE "+effects+" (run_id text, task text, token bigint)")
	require.NoError(t, err)
	count := func() int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+effects).Scan(&n))
		return n
	}
	now := time.Now()
	id, _, err := s.CreateRun(ctx, newRunFor("wf", "e1", now, batuta.TaskSpec{Name: "pay"}, batuta.TaskSpec{Name: "mail", Deps: []int{0}}))
	require.NoError(t, err)
	claim := func() batuta.Claim {
		cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)})
		require.NoError(t, err)
		require.Len(t, cs, 1)
		return cs[0]
	}
	effect := func(c batuta.Claim, commit bool) error {
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		_, err = tx.Exec(ctx, "INSERT INTO "+effects+" VALUES ($1, $2, $3)", c.RunID, c.Task, c.Token)
		require.NoError(t, err)
		if err := s.CompleteInTx(ctx, tx, c.Ref(), map[string]int{"charged": 1250}); err != nil {
			return err
		}
		if commit {
			return tx.Commit(ctx)
		}
		return nil // rolled back by the defer
	}

	pay := claim()
	// Rolled back: neither the effect nor the success.
	require.NoError(t, effect(pay, false))
	require.Zero(t, count())
	r, err := s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.TaskRunning, r.Task("pay").State)

	// Committed: both.
	require.NoError(t, effect(pay, true))
	require.Equal(t, 1, count())
	r, err = s.GetRun(ctx, id)
	require.NoError(t, err)
	p := r.Task("pay")
	require.Equal(t, batuta.TaskSucceeded, p.State)
	out, err := batuta.OutputAs[map[string]int](p.Output)
	require.NoError(t, err)
	require.Equal(t, 1250, out["charged"])
	require.Len(t, p.Attempts, 1)
	require.Equal(t, 1, p.Attempts[0].Number)

	// The orchestrator then reports the same success: a no-op, no error,
	// and the output recorded in the transaction stands.
	res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: pay.Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1,
		Output: json.RawMessage(`"other"`), StartedAt: now, FinishedAt: now}})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.Equal(t, 1, res[0].Ready, "the idempotent completion reports the dependent the transaction made ready")
	require.Empty(t, res[0].RunFinished)
	r, err = s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Len(t, r.Task("pay").Attempts, 1)
	// Any other outcome for that claim is fenced off.
	res, err = s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: pay.Ref(), Outcome: batuta.OutcomeFailed, Attempt: 1}})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, batuta.ErrLeaseLost)
	// Completing in a tx again under the same token is idempotent too.
	require.NoError(t, effect(pay, false))

	// A worker whose lease was rescued cannot complete in its tx.
	mail := claim()
	require.Equal(t, "mail", mail.Task)
	n, _, err := s.RescueExpired(ctx, now.Add(2*time.Minute), 3)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.ErrorIs(t, effect(mail, true), batuta.ErrLeaseLost)
	require.Equal(t, 1, count(), "the stale worker's effect was rolled back with its failed completion")
	// The new owner completes; the run finishes.
	fresh, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w2", Limit: 1, Now: now.Add(3 * time.Minute), LeaseUntil: now.Add(time.Hour)})
	require.NoError(t, err)
	require.Len(t, fresh, 1)
	require.NoError(t, effect(fresh[0], true))
	r, err = s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	require.Equal(t, 2, count())
	// The orchestrator's own completion learns that the transaction
	// finished the run (so hooks and waiters hear about it once).
	res, err = s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: fresh[0].Ref(), Outcome: batuta.OutcomeSucceeded, Attempt: 1}})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.Equal(t, batuta.RunSucceeded, res[0].RunFinished)
}

// TestClaimCarriesRescueAndLeaseStatus covers what the suite does not: a
// lease held while a run is canceled elsewhere, and an expired lease of a
// canceled run that the rescuer finishes.
func TestRescueInCanceledRun(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true})
	ctx := testCtx(t)
	now := time.Now()
	id, _, err := s.CreateRun(ctx, newRunFor("wf", "e", now))
	require.NoError(t, err)
	cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 1, Now: now, LeaseUntil: now.Add(time.Second)})
	require.NoError(t, err)
	require.Len(t, cs, 1)
	ok, err := s.CancelRun(ctx, id, "", now)
	require.NoError(t, err)
	require.True(t, ok)
	again, err := s.CancelRun(ctx, id, "", now)
	require.NoError(t, err)
	require.False(t, again, "a second cancel changes nothing")
	n, f, err := s.RescueExpired(ctx, now.Add(time.Minute), 3)
	require.NoError(t, err)
	require.Zero(t, n+f)
	r, err := s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunCanceled, r.State)
	require.Equal(t, "canceled", r.Error)
	require.Equal(t, batuta.TaskCanceled, r.Tasks[0].State)
	require.Equal(t, 1, r.Tasks[0].Rescues)
}

// TestCompleteInTxContext is the ctx-first contract: a canceled ctx fails
// the call.
func TestCompleteInTxCanceledCtx(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true})
	tx, err := pool.Begin(testCtx(t))
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = s.CompleteInTx(ctx, tx, batuta.ClaimRef{RunID: newRunID(), Task: "t", Token: 1}, nil)
	require.Error(t, err)
}

// TestCompleteInTxThroughOrchestrator: a task completes itself in its own
// transaction through Input.Claim; the orchestrator's later completion is a
// no-op, the run finishes, Wait and the hooks hear about it.
func TestCompleteInTxThroughOrchestrator(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 8)
	s := newTestStore(t, pool, Config{})
	ctx := testCtx(t)
	ledger := quoteQualified(s.Schema(), "ledger")
	_, err := pool.Exec(ctx, "CREATE TABLE "+ledger+" (run_id text PRIMARY KEY, amount int)")
	require.NoError(t, err)
	finished := &runFinishCounter{per: make(map[string]int)}
	o, err := batuta.New(batuta.Config{Store: s, NoLogHooks: true, Logger: quiet(), Hooks: []batuta.Hooks{finished}})
	require.NoError(t, err)
	require.NoError(t, o.Register(&batuta.Workflow{Name: "pay", Tasks: []batuta.Task{
		{Name: "charge", Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			tx, err := pool.Begin(ctx)
			if err != nil {
				return nil, err
			}
			defer func() { _ = tx.Rollback(ctx) }()
			if _, err := tx.Exec(ctx, "INSERT INTO "+ledger+" VALUES ($1, 1250)", in.RunID()); err != nil {
				return nil, err
			}
			out := map[string]int{"charged": 1250}
			if err := s.CompleteInTx(ctx, tx, in.Claim(), out); err != nil {
				return nil, err
			}
			return out, tx.Commit(ctx)
		}},
		{Name: "receipt", Deps: []string{"charge"}, Run: func(ctx context.Context, in *batuta.Input) (any, error) {
			return batuta.Output[map[string]int](in, "charge")
		}},
	}}))
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- o.Run(rctx) }()
	defer func() {
		stop()
		require.NoError(t, <-done)
	}()
	id, err := o.Submit(ctx, "pay", batuta.Event{ID: "order-1"})
	require.NoError(t, err)
	r, err := o.Wait(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
	got, err := batuta.OutputAs[map[string]int](r.Task("receipt").Output)
	require.NoError(t, err)
	require.Equal(t, 1250, got["charged"])
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+ledger).Scan(&n))
	require.Equal(t, 1, n)
	require.Len(t, r.Task("charge").Attempts, 1)
	require.Eventually(t, func() bool { return finished.n.Load() == 1 }, 10*time.Second, 5*time.Millisecond)
}
