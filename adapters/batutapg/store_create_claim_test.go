package batutapg

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"sort"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

// createClaimTestRuns returns runs of one task, of a chain, of a diamond,
// of two roots and of three roots (more than the claim's limit of two),
// some with a deadline or a priority.
func createClaimTestRuns(now time.Time) []batuta.NewRun {
	shapes := [][]batuta.TaskSpec{
		{{Name: "a"}},
		{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{1}}},
		{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{0}}, {Name: "d", Deps: []int{1, 2}}},
		{{Name: "a"}, {Name: "b"}, {Name: "c", Deps: []int{0, 1}}},
		{{Name: "a"}, {Name: "b"}, {Name: "c"}},
	}
	return shapedRuns(now, shapes, 10, 4)
}

// createAndDrive creates each run with CreateRunsAndClaim (limit two) and
// works it to its end, one task at a time, claiming when a completion
// claimed nothing. It returns what the creating calls claimed and what the
// whole run claimed, per run sorted by task.
func createAndDrive(t *testing.T, s *Store, runs []batuta.NewRun, now time.Time) (created, trace []string) {
	t.Helper()
	ctx := context.Background()
	p := batuta.ClaimParams{Owner: "w", Limit: 2, Now: now.Add(time.Second), LeaseUntil: now.Add(time.Hour)}
	one := p
	one.Limit = 1
	show := func(c batuta.Claim) string {
		up, err := json.Marshal(c.Upstream)
		require.NoError(t, err)
		return fmt.Sprintf("%s/%s attempt %d rescues %d workflow %s event %s %s deadline %v upstream %s token bits %#x",
			c.Event.ID, c.Task, c.Attempt, c.Rescues, c.Workflow, c.Event.Data, c.Event.Time.UTC(), c.RunDeadline.UTC(), up, c.Token&(tokenDepsBit<<1-1))
	}
	for _, nr := range runs {
		res, cs, err := s.CreateRunsAndClaim(ctx, []batuta.NewRun{nr}, p)
		require.NoError(t, err)
		require.Equal(t, []batuta.CreateResult{{ID: nr.ID, Created: true}}, res)
		var got []string
		for _, c := range cs {
			created = append(created, show(c))
		}
		for len(cs) > 0 {
			c := cs[0]
			got = append(got, show(c))
			h := fnv.New32a()
			_, _ = h.Write([]byte(c.Task))
			start := now.Add(time.Duration(h.Sum32()%1000) * time.Millisecond)
			_, next, err := s.CompleteTasksAndClaim(ctx, []batuta.Completion{{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: batuta.OutcomeSucceeded,
				Output: json.RawMessage(fmt.Sprintf(`{"from":%q}`, c.Task)), StartedAt: start, FinishedAt: start.Add(time.Millisecond)}}, one)
			require.NoError(t, err)
			cs = append(cs[1:], next...)
			if len(cs) == 0 {
				cs, err = s.ClaimTasks(ctx, one)
				require.NoError(t, err)
			}
		}
		sort.Strings(got)
		trace = append(trace, got...)
	}
	sort.Strings(created)
	return created, trace
}

// TestCreateClaimMatchesGeneral: runs created by the claiming create
// statement write the rows the create and claim statements write, column
// for column, and their root tasks are handed out as the claim hands them
// out; a run with more root tasks than the claim's limit goes the general
// way.
func TestCreateClaimMatchesGeneral(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 8)
	now := time.Now().UTC().Truncate(time.Microsecond)
	runs := createClaimTestRuns(now)
	general := newTestStore(t, pool, Config{Logger: quiet()})
	general.noCreateClaim = true
	gc, gt := createAndDrive(t, general, runs, now)
	require.Zero(t, general.createClaims.Load())

	s := newTestStore(t, pool, Config{Logger: quiet()})
	sc, st := createAndDrive(t, s, runs, now)
	require.Equal(t, gc, sc, "claims of the creating calls")
	require.Equal(t, gt, st, "claims")
	// The first run (a new store reads its hints first) and those with
	// three roots went the general way.
	want := 0
	for _, nr := range runs[1:] {
		roots := 0
		for _, ts := range nr.Tasks {
			if len(ts.Deps) == 0 {
				roots++
			}
		}
		if roots <= 2 {
			want += roots
		}
	}
	require.Equal(t, int64(want), s.createClaims.Load(), "root tasks leased by the claiming create statement")
	for _, table := range []string{"runs", "run_states", "tasks"} {
		require.Equal(t, stableRows(t, pool, general.cfg.Schema, table), stableRows(t, pool, s.cfg.Schema, table), "rows of %s", table)
	}
	var left int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM `+s.schema+`.runs WHERE state <> 'succeeded'`).Scan(&left))
	require.Zero(t, left, "runs left unfinished")
}

// TestCreateClaimOrder: the claiming create statement leases a new run's
// root tasks only when no ready task goes ahead of them in claim order and
// their workflow is not paused, and only for a caller that claims its
// workflow; otherwise the tasks stay ready and the claims take them in
// order.
func TestCreateClaimOrder(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 8)
	ctx := context.Background()
	now := time.Now()
	p := batuta.ClaimParams{Owner: "w", Workflows: []string{"wf", "other"}, Limit: 1, Now: now.Add(time.Second), LeaseUntil: now.Add(time.Hour)}
	other := func(s *Store, event string, prio int, created time.Time) {
		_, err := s.CreateRuns(ctx, []batuta.NewRun{{ID: newRunID(), Workflow: "other", CreatedAt: created, Priority: prio,
			Event: batuta.Event{ID: event}, Tasks: []batuta.TaskSpec{{Name: "x"}}}})
		require.NoError(t, err)
	}
	create := func(s *Store, event string, p batuta.ClaimParams) (string, []batuta.Claim) {
		id := newRunID()
		res, cs, err := s.CreateRunsAndClaim(ctx, []batuta.NewRun{{ID: id, Workflow: "wf", CreatedAt: now.Add(-time.Minute),
			Event: batuta.Event{ID: event}, Tasks: []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}}}}, p)
		require.NoError(t, err)
		require.True(t, res[0].Created)
		return id, cs
	}
	// A new store reads its hints with its first claim.
	warm := func(s *Store) {
		_, err := s.ClaimTasks(ctx, p)
		require.NoError(t, err)
	}

	t.Run("taken", func(t *testing.T) {
		s := newTestStore(t, pool, Config{Logger: quiet()})
		warm(s)
		other(s, "later", 0, now) // same priority, due later: behind a
		id, cs := create(s, "e1", p)
		require.Len(t, cs, 1)
		require.Equal(t, id, cs[0].RunID)
		require.Equal(t, "a", cs[0].Task)
		require.Equal(t, 1, cs[0].Attempt)
		require.NotZero(t, cs[0].Token&tokenDepsBit, "a's token says it has dependents")
		require.Equal(t, int64(1), s.createClaims.Load())
		require.True(t, s.createBacklog.Load(), "a create that saw a ready task waiting does not say so")
		// The row is a claimed task's.
		var (
			state, owner                   string
			hold                           int
			lease, claimedAt, firstClaimed time.Time
			req                            *int64
		)
		require.NoError(t, pool.QueryRow(ctx, `SELECT state, owner, hold, lease_until, claimed_at, first_claimed_at, claim_req FROM `+s.schema+
			`.tasks WHERE run_id = $1 AND name = 'a'`, id).Scan(&state, &owner, &hold, &lease, &claimedAt, &firstClaimed, &req))
		require.Equal(t, "running", state)
		require.Equal(t, "w", owner)
		require.Zero(t, hold)
		require.WithinDuration(t, s.toDB(p.LeaseUntil), lease, time.Microsecond, "lease end, on the database's clock")
		require.WithinDuration(t, p.Now, claimedAt, time.Microsecond, "claimed at")
		require.WithinDuration(t, p.Now, firstClaimed, time.Microsecond, "first claimed at")
		require.NotNil(t, req, "no claim request recorded (a lost reply could not release the task)")
		// The lease is a claim's: it is extended and completed as one.
		ext, err := s.ExtendLeases(ctx, []batuta.ClaimRef{cs[0].Ref()}, now.Add(2*time.Hour))
		require.NoError(t, err)
		require.Equal(t, []batuta.LeaseStatus{batuta.LeaseHeld}, ext)
		res, next, err := s.CompleteTasksAndClaim(ctx, succeeded(cs[0], now), p)
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		require.Len(t, next, 1)
		require.Equal(t, "b", next[0].Task)
	})
	for _, tc := range []struct {
		name string
		prio int
		age  time.Duration
	}{{"higher priority ahead", 5, 0}, {"older ahead", 0, 2 * time.Minute}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t, pool, Config{Logger: quiet()})
			warm(s)
			other(s, "ahead", tc.prio, now.Add(-tc.age))
			// The claiming statement leaves the claim to the claims...
			_, cs := create(s, "e1", p)
			require.Empty(t, cs, "a was claimed ahead of a ready task before it")
			require.True(t, s.createBacklog.Load(), "a create that saw a ready task waiting does not say so")
			// ...so the next create claims the general way, the task ahead
			// first, and so on while a claim takes its whole limit.
			p2 := p
			p2.Limit = 2
			_, cs = create(s, "e2", p2)
			require.Len(t, cs, 2)
			require.Equal(t, []string{"x", "a"}, []string{cs[0].Task, cs[1].Task})
			require.Equal(t, "ahead", cs[0].Event.ID)
			require.True(t, s.createBacklog.Load())
			p3 := p
			p3.Limit = 3
			_, cs = create(s, "e3", p3)
			require.Len(t, cs, 2, "the roots of e2 and e3")
			require.False(t, s.createBacklog.Load(), "a claim short of its limit leaves the backlog hint set")
			require.Zero(t, s.createClaims.Load())
			_, cs = create(s, "e4", p)
			require.Len(t, cs, 1)
			require.Equal(t, "e4", cs[0].Event.ID)
			require.Equal(t, int64(1), s.createClaims.Load())
		})
	}
	t.Run("paused", func(t *testing.T) {
		s := newTestStore(t, pool, Config{Logger: quiet()})
		warm(s)
		_, err := s.SetPaused(ctx, "wf", true)
		require.NoError(t, err)
		id, cs := create(s, "e1", p)
		require.Empty(t, cs, "a task of a paused workflow was claimed")
		_, err = s.SetPaused(ctx, "wf", false)
		require.NoError(t, err)
		cs, err = s.ClaimTasks(ctx, p)
		require.NoError(t, err)
		require.Len(t, cs, 1)
		require.Equal(t, id, cs[0].RunID)
	})
	t.Run("workflow not claimed", func(t *testing.T) {
		s := newTestStore(t, pool, Config{Logger: quiet()})
		warm(s)
		po := p
		po.Workflows = []string{"other"}
		_, cs := create(s, "e1", po)
		require.Empty(t, cs)
		require.Zero(t, s.createClaims.Load())
	})
	t.Run("duplicate", func(t *testing.T) {
		s := newTestStore(t, pool, Config{Logger: quiet()})
		warm(s)
		id, cs := create(s, "e1", p)
		require.Len(t, cs, 1)
		res, cs2, err := s.CreateRunsAndClaim(ctx, []batuta.NewRun{{ID: newRunID(), Workflow: "wf", CreatedAt: now,
			Event: batuta.Event{ID: "e1"}, Tasks: []batuta.TaskSpec{{Name: "a"}}}}, p)
		require.NoError(t, err)
		require.Equal(t, []batuta.CreateResult{{ID: id, Created: false}}, res)
		require.Empty(t, cs2, "a duplicate's tasks were claimed")
		var running int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM `+s.schema+`.tasks WHERE state = 'running'`).Scan(&running))
		require.Equal(t, 1, running)
	})
}
