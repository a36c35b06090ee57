package batutapg

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// TestLeaseTokensWrap runs a chain through the end of the lease token
// sequence. A token is the sequence's value times 2^20 plus hint bits:
// past 2^43 it would leave bigint, and every claim and step would fail
// ("bigint out of range") for good. The sequence wraps to 1 instead; the
// tokens stay positive and distinct, and fencing still holds across the
// wrap (a completion under the token a task held before a rescue is
// refused after it).
func TestLeaseTokensWrap(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true})
	ctx := testCtx(t)
	_, err := pool.Exec(ctx, "SELECT setval($1::regclass, $2)", s.schema+".tokens", int64(tokenSeqMax-2))
	require.NoError(t, err)

	now := time.Now()
	chain := chainSpecs(6, "t%d")
	id, _, err := s.CreateRun(ctx, batuta.NewRun{ID: newRunID(), Workflow: "wrap", CreatedAt: now,
		Event: batuta.Event{ID: "wrap"}, Tasks: chain})
	require.NoError(t, err)
	p := func(now time.Time) batuta.ClaimParams {
		return batuta.ClaimParams{Owner: "w", Limit: 1, Now: now, LeaseUntil: now.Add(time.Minute)}
	}
	cs, err := s.ClaimTasks(ctx, p(now))
	require.NoError(t, err)
	require.Len(t, cs, 1)

	// The first task's lease expires and it is claimed again: the second
	// claim's token comes from the wrapped sequence, or right before it.
	stale := cs[0]
	later := now.Add(2 * time.Minute)
	rescued, _, err := s.RescueExpired(ctx, later, 10)
	require.NoError(t, err)
	require.Equal(t, 1, rescued)
	cs, err = s.ClaimTasks(ctx, p(later))
	require.NoError(t, err)
	require.Len(t, cs, 1)
	require.NotEqual(t, stale.Token, cs[0].Token)
	res, err := s.CompleteTasks(ctx, []batuta.Completion{{ClaimRef: stale.Ref(), Attempt: stale.Attempt,
		Outcome: batuta.OutcomeSucceeded, StartedAt: now, FinishedAt: later}})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, batuta.ErrLeaseLost, "the stale lease is fenced")

	seen := map[int64]bool{stale.Token: true}
	out := json.RawMessage(`{"ok":true}`)
	for step := 0; len(cs) == 1; step++ {
		c := cs[0]
		require.Positive(t, c.Token, "step %d", step)
		require.False(t, seen[c.Token], "token %d handed out twice", c.Token)
		seen[c.Token] = true
		comp := []batuta.Completion{{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: batuta.OutcomeSucceeded,
			Output: out, StartedAt: later, FinishedAt: later}}
		var res []batuta.CompleteResult
		res, cs, err = s.CompleteTasksAndClaim(ctx, comp, p(later))
		require.NoError(t, err, "step %d", step)
		require.NoError(t, res[0].Err, "step %d", step)
	}
	require.Len(t, seen, len(chain)+1)

	var last int64
	require.NoError(t, pool.QueryRow(ctx, "SELECT last_value FROM "+s.schema+".tokens").Scan(&last))
	require.Less(t, last, int64(100), "the sequence wrapped")
	r, err := s.GetRun(ctx, id)
	require.NoError(t, err)
	require.Equal(t, batuta.RunSucceeded, r.State)
}
