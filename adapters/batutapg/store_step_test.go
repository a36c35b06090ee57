package batutapg

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// stepTestRuns returns runs whose successes go through completeStep: a
// chain, a diamond whose join fires on a failure, a join firing on the
// first success, a deadline and a priority.
func stepTestRuns(now time.Time) []batuta.NewRun {
	shapes := [][]batuta.TaskSpec{
		{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{1}}, {Name: "d", Deps: []int{2}}},
		{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{0}}, {Name: "d", Deps: []int{1, 2}, FireOn: batuta.TaskFailed}},
		{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "slow"}, {Name: "c", Deps: []int{1, 2}, FireOn: batuta.TaskSucceeded}},
		{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{0, 1}}},
	}
	return shapedRuns(now, shapes, 12, 5)
}

// shapedRuns returns n runs of workflow "wf" cycling through shapes,
// created a millisecond apart, every third with a deadline and those at
// i%prioEvery == 2 with priority 3.
func shapedRuns(now time.Time, shapes [][]batuta.TaskSpec, n, prioEvery int) []batuta.NewRun {
	var runs []batuta.NewRun
	for i := 0; i < n; i++ {
		nr := batuta.NewRun{ID: newRunID(), Workflow: "wf", CreatedAt: now.Add(time.Duration(i) * time.Millisecond),
			Event: batuta.Event{ID: fmt.Sprintf("ev-%02d", i), Data: []byte(fmt.Sprintf(`{"i":%d}`, i)), Time: now},
			Tasks: shapes[i%len(shapes)]}
		if i%3 == 1 {
			nr.Deadline = now.Add(time.Hour)
		}
		if i%prioEvery == 2 {
			nr.Priority = 3
		}
		runs = append(runs, nr)
	}
	return runs
}

// claimTrace is what a claim handed a worker, for comparing two stores.
type claimTrace struct {
	Task, Event string
	Attempt     int
	Upstream    string
	Deadline    bool
}

// driveRuns creates each run and works it to its end alone, one task at a
// time, completing each task (succeeded; the one named "slow" last) with
// CompleteTasksAndClaim and claiming apart when that claimed nothing (as a
// worker does). The
// attempt times depend on the task alone, so two stores that claim a
// run's ready tasks in another order still write the same rows. It
// returns the claims, per run sorted by task.
func driveRuns(t *testing.T, s *Store, runs []batuta.NewRun, now time.Time) (trace []claimTrace, withDeps int) {
	t.Helper()
	ctx := context.Background()
	p := batuta.ClaimParams{Owner: "w", Limit: 1, Now: now.Add(time.Second), LeaseUntil: now.Add(time.Hour)}
	for _, nr := range runs {
		_, err := s.CreateRuns(ctx, []batuta.NewRun{nr})
		require.NoError(t, err)
		var held []batuta.Claim // "slow", completed once nothing else is left
		var got []claimTrace
		made := 0 // tasks the completions made ready
		claim := func() []batuta.Claim {
			cs, err := s.ClaimTasks(ctx, p)
			require.NoError(t, err)
			return cs
		}
		cs := claim()
		for {
			switch {
			case len(cs) == 0 && held == nil:
			case len(cs) == 0:
				cs, held = held, nil
			default:
				c := cs[0]
				// A dependency still pending or running (fire-on rules) is
				// one of the two, as the claim order of tied tasks decides.
				ups := slices.Clone(c.Upstream)
				for i := range ups {
					if ups[i].State == batuta.TaskPending || ups[i].State == batuta.TaskRunning {
						ups[i].State = "unfinished"
					}
				}
				up, err := json.Marshal(ups)
				require.NoError(t, err)
				got = append(got, claimTrace{Task: c.Task, Event: c.Event.ID, Attempt: c.Attempt, Upstream: string(up), Deadline: !c.RunDeadline.IsZero()})
				if c.Task == "slow" {
					held, cs = cs, claim()
					continue
				}
			}
			if len(cs) == 0 {
				break
			}
			c := cs[0]
			h := fnv.New32a()
			_, _ = h.Write([]byte(c.Task))
			start := now.Add(time.Duration(h.Sum32()%1000) * time.Millisecond)
			comp := batuta.Completion{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: batuta.OutcomeSucceeded,
				Output: json.RawMessage(fmt.Sprintf(`{"from":%q}`, c.Task)), StartedAt: start, FinishedAt: start.Add(time.Millisecond)}
			if c.Token&tokenDepsBit != 0 {
				withDeps++
			}
			res, next, err := s.CompleteTasksAndClaim(ctx, []batuta.Completion{comp}, p)
			require.NoError(t, err)
			require.NoError(t, res[0].Err)
			made += res[0].Ready
			cs = next
			if len(cs) == 0 {
				// As a worker does when its completion claimed nothing
				// and work may be left.
				cs = claim()
			}
		}
		sort.Slice(got, func(i, j int) bool { return got[i].Task < got[j].Task })
		trace = append(trace, got...)
		trace = append(trace, claimTrace{Task: fmt.Sprintf("(%d made ready)", made), Event: nr.Event.ID})
	}
	return trace, withDeps
}

// stableRows returns schema.table's rows as JSON without the columns that
// differ from one claim to the next (tokens, claim times and requests).
func stableRows(t *testing.T, pool *pgxpool.Pool, schema, table string) []string {
	t.Helper()
	return tableRows(t, pool, schema, table, "token", "last_token", "claimed_at", "first_claimed_at", "claim_req", "owner", "lease_until", "finished_by")
}

// TestCompleteStepMatchesGeneral: runs worked through completeStep write
// the rows the general completion and claim statements write, column for
// column, and their tasks are handed out with the same attempts, events,
// deadlines and dependencies' results.
func TestCompleteStepMatchesGeneral(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 8)
	now := time.Now().UTC().Truncate(time.Microsecond)
	runs := stepTestRuns(now)
	general := newTestStore(t, pool, Config{Logger: quiet()})
	general.noStep = true
	gt, _ := driveRuns(t, general, runs, now)
	require.Zero(t, general.steps.Load())
	for _, v := range []struct{ full, noLink bool }{{false, false}, {false, true}, {true, false}} {
		step := newTestStore(t, pool, Config{Logger: quiet()})
		step.stepFull, step.noLink = v.full, v.noLink
		st, withDeps := driveRuns(t, step, runs, now)
		require.Positive(t, withDeps)
		require.Equal(t, int64(withDeps), step.steps.Load(), "successes of tasks with dependents recorded by completeStep (%+v)", v)
		if v.full || v.noLink {
			require.Zero(t, step.links.Load(), "%+v", v)
		} else {
			// The chain's links, the diamond's branches (a join), the
			// first-success join's (taken, and left when it fired),
			// and the last shape's second task.
			require.Positive(t, step.links.Load())
			require.Less(t, step.links.Load(), step.steps.Load(), "the tasks with two dependents take the lean statement")
		}
		require.Equal(t, gt, st, "claims (%+v)", v)
		for _, table := range []string{"runs", "run_states", "tasks"} {
			require.Equal(t, stableRows(t, pool, general.cfg.Schema, table), stableRows(t, pool, step.cfg.Schema, table), "rows of %s (%+v)", table, v)
		}
		var left int
		require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM `+step.schema+`.runs WHERE state <> 'succeeded'`).Scan(&left))
		require.Zero(t, left, "runs left unfinished")
	}
}

// stepChain creates one run of a -> b (-> c) and claims a.
func stepChain(t *testing.T, s *Store, event string, prio int, created time.Time, p batuta.ClaimParams) (string, batuta.Claim) {
	t.Helper()
	id := newRunID()
	_, err := s.CreateRuns(context.Background(), []batuta.NewRun{{ID: id, Workflow: "wf", CreatedAt: created, Priority: prio,
		Event: batuta.Event{ID: event}, Tasks: []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{1}}}}})
	require.NoError(t, err)
	cs, err := s.ClaimTasks(context.Background(), p)
	require.NoError(t, err)
	require.Len(t, cs, 1)
	require.Equal(t, id, cs[0].RunID)
	require.NotZero(t, cs[0].Token&tokenDepsBit, "a's token says it has dependents")
	return id, cs[0]
}

func succeeded(c batuta.Claim, now time.Time) []batuta.Completion {
	return []batuta.Completion{{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: batuta.OutcomeSucceeded,
		Output: json.RawMessage(`{"ok":true}`), StartedAt: now, FinishedAt: now}}
}

// TestCompleteStepClaimOrder: the successor is taken only when no ready
// task goes ahead of it in claim order, and never for a paused workflow;
// otherwise it stays ready for the claims, which take it in order.
func TestCompleteStepClaimOrder(t *testing.T) {
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

	// Both statements that take a successor: the link statement (a has
	// one dependent) and the lean step statement.
	for _, noLink := range []bool{false, true} {
		newStore := func(t *testing.T) *Store {
			s := newTestStore(t, pool, Config{Logger: quiet()})
			s.noLink = noLink
			return s
		}
		t.Run(fmt.Sprintf("noLink=%v", noLink), func(t *testing.T) {
			t.Run("taken", func(t *testing.T) {
				s := newStore(t)
				id, a := stepChain(t, s, "e1", 0, now.Add(-time.Minute), p)
				other(s, "later", 0, now) // same priority, due later: behind b
				res, cs, err := s.CompleteTasksAndClaim(ctx, succeeded(a, now), p)
				require.NoError(t, err)
				require.Equal(t, 1, res[0].Ready)
				require.Len(t, cs, 1)
				require.Equal(t, "b", cs[0].Task)
				require.Equal(t, id, cs[0].RunID)
				require.Equal(t, int64(1), s.steps.Load())
				require.Equal(t, boolInt(!noLink), int(s.links.Load()), "a link recorded by the link statement")
				require.Equal(t, 1, len(cs[0].Upstream))
				up := cs[0].Upstream[0]
				require.Equal(t, "a", up.Name)
				require.Equal(t, batuta.TaskSucceeded, up.State)
				require.JSONEq(t, `{"ok":true}`, string(up.Output.(json.RawMessage)))
			})
			for _, tc := range []struct {
				name string
				prio int
				age  time.Duration
			}{{"higher priority ahead", 5, 0}, {"older ahead", 0, 2 * time.Minute}} {
				t.Run(tc.name, func(t *testing.T) {
					s := newStore(t)
					_, a := stepChain(t, s, "e1", 0, now.Add(-time.Minute), p)
					other(s, "ahead", tc.prio, now.Add(-tc.age))
					// The lean statement leaves the claim to the caller...
					res, cs, err := s.CompleteTasksAndClaim(ctx, succeeded(a, now), p)
					require.NoError(t, err)
					require.Equal(t, 1, res[0].Ready)
					require.Empty(t, cs, "b was claimed ahead of a ready task before it")
					require.True(t, s.stepBacklog.Load(), "a step that saw a ready task waiting does not say so")
					p2 := p
					p2.Limit = 2
					cs, err = s.ClaimTasks(ctx, p2)
					require.NoError(t, err)
					require.Len(t, cs, 2)
					require.Equal(t, []string{"x", "b"}, []string{cs[0].Task, cs[1].Task})
					// ...and the next step, with the full statement, takes the
					// task ahead (another run's, here) instead of c.
					other(s, "ahead2", tc.prio, now.Add(-tc.age))
					res, cs, err = s.CompleteTasksAndClaim(ctx, succeeded(cs[1], now), p)
					require.NoError(t, err)
					require.Equal(t, 1, res[0].Ready)
					require.Len(t, cs, 1)
					require.Equal(t, "x", cs[0].Task)
					require.Equal(t, "ahead2", cs[0].Event.ID)
					require.Equal(t, int64(2), s.steps.Load())
					cs, err = s.ClaimTasks(ctx, p)
					require.NoError(t, err)
					require.Len(t, cs, 1)
					require.Equal(t, "c", cs[0].Task)
				})
			}
			t.Run("paused", func(t *testing.T) {
				s := newStore(t)
				_, a := stepChain(t, s, "e1", 0, now.Add(-time.Minute), p)
				_, err := s.SetPaused(ctx, "wf", true)
				require.NoError(t, err)
				res, cs, err := s.CompleteTasksAndClaim(ctx, succeeded(a, now), p)
				require.NoError(t, err)
				require.Equal(t, 1, res[0].Ready)
				require.Empty(t, cs, "a task of a paused workflow was claimed")
				_, err = s.SetPaused(ctx, "wf", false)
				require.NoError(t, err)
				cs, err = s.ClaimTasks(ctx, p)
				require.NoError(t, err)
				require.Len(t, cs, 1)
				require.Equal(t, "b", cs[0].Task)
			})

		})
	}
}

// boolInt is 1 for true.
func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestCompleteStepRepeatAndLostLease: a completion sent again (its first
// reply lost) is answered as the first was, and one under a stale token
// is refused; neither leaves a task claimed that its caller was not handed
// (with a task of another run ready beside them, for the full statement's
// claim of the task ahead).
func TestCompleteStepRepeatAndLostLease(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	ctx := context.Background()
	now := time.Now()
	p := batuta.ClaimParams{Owner: "w", Limit: 1, Now: now.Add(time.Second), LeaseUntil: now.Add(time.Hour)}
	for _, full := range []bool{false, true} {
		s := newTestStore(t, pool, Config{Logger: quiet()})
		s.stepFull = full
		_, a := stepChain(t, s, "e1", 0, now.Add(-time.Minute), p)
		res, cs, err := s.CompleteTasksAndClaim(ctx, succeeded(a, now), p)
		require.NoError(t, err)
		require.Len(t, cs, 1)
		b := cs[0]
		_, err = s.CreateRuns(ctx, []batuta.NewRun{{ID: newRunID(), Workflow: "wf", CreatedAt: now, Event: batuta.Event{ID: "other"},
			Tasks: []batuta.TaskSpec{{Name: "x"}}}})
		require.NoError(t, err)
		held := map[string]bool{b.RunID + "/" + b.Task: true}
		running := func() map[string]bool {
			rows, err := pool.Query(ctx, `SELECT run_id::text || '/' || name FROM `+s.schema+`.tasks WHERE state = 'running'`)
			require.NoError(t, err)
			names, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			out := map[string]bool{}
			for _, n := range names {
				out[n] = true
			}
			return out
		}

		res2, cs2, err := s.CompleteTasksAndClaim(ctx, succeeded(a, now), p)
		require.NoError(t, err)
		require.NoError(t, res2[0].Err, "a repeated completion (full %v)", full)
		require.Equal(t, res[0].RunFinished, res2[0].RunFinished)
		for _, c := range cs2 {
			require.NotEqual(t, "b", c.Task, "b claimed twice")
			held[c.RunID+"/"+c.Task] = true
		}
		require.Equal(t, held, running(), "tasks running that the caller was not handed (full %v)", full)

		stale := b
		stale.Token += 1 << 20 // another claim's token for the same task
		res3, cs3, err := s.CompleteTasksAndClaim(ctx, succeeded(stale, now), p)
		require.NoError(t, err)
		require.ErrorIs(t, res3[0].Err, batuta.ErrLeaseLost)
		for _, c := range cs3 {
			held[c.RunID+"/"+c.Task] = true
		}
		require.Equal(t, held, running(), "tasks running that the caller was not handed (full %v)", full)

		res4, cs4, err := s.CompleteTasksAndClaim(ctx, succeeded(b, now), p)
		require.NoError(t, err)
		require.NoError(t, res4[0].Err)
		if len(cs4) == 0 || cs4[0].Task != "c" {
			cs4, err = s.ClaimTasks(ctx, p)
			require.NoError(t, err)
		}
		require.Len(t, cs4, 1)
		require.Equal(t, "c", cs4[0].Task)
		res5, _, err := s.CompleteTasksAndClaim(ctx, succeeded(cs4[0], now), p)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, res5[0].RunFinished)
	}
}

// TestCompleteStepConcurrentChains: workers working chains side by side,
// their steps recorded beside one another (the step slots) and through the
// combiner when the slots are taken, finish every run with every task
// run once, and leave no slot taken.
func TestCompleteStepConcurrentChains(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 16)
	ctx := context.Background()
	s := newTestStore(t, pool, Config{Logger: quiet()})
	const runs, length, workers = 24, 15, 8
	chain := chainSpecs(length, "t%02d")
	now := time.Now()
	var batch []batuta.NewRun
	for i := 0; i < runs; i++ {
		batch = append(batch, batuta.NewRun{ID: newRunID(), Workflow: "wf", CreatedAt: now, Event: batuta.Event{ID: fmt.Sprint(i)}, Tasks: chain})
	}
	_, err := s.CreateRuns(ctx, batch)
	require.NoError(t, err)
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		go func() {
			p := batuta.ClaimParams{Owner: fmt.Sprint("w", w), Limit: 1, Now: time.Now(), LeaseUntil: time.Now().Add(time.Hour)}
			errs <- workUntilIdle(ctx, s, p)
		}()
	}
	for w := 0; w < workers; w++ {
		require.NoError(t, <-errs)
	}
	var unfinished, reruns int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state <> 'succeeded') FROM `+s.schema+`.runs`).Scan(&unfinished))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state <> 'succeeded' OR json_array_length(attempts) <> 1) FROM `+s.schema+`.tasks`).Scan(&reruns))
	require.Zero(t, unfinished, "runs not succeeded")
	require.Zero(t, reruns, "tasks not succeeded at their first attempt")
	require.Positive(t, s.steps.Load())
	require.Zero(t, len(s.stepSlots), "step slots left taken")
}

// TestLinkStatementDeclines: the link statement writes nothing, and the
// general statements record the success, when its dependent was already
// counted down (a join that fired on an earlier success: this success
// finishes the run) or when the token's link bit is wrong (a token from
// before the bit, of a task with two dependents).
func TestLinkStatementDeclines(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	ctx := context.Background()
	now := time.Now()
	p := batuta.ClaimParams{Owner: "w", Limit: 1, Now: now.Add(time.Second), LeaseUntil: now.Add(time.Hour)}

	t.Run("fired join", func(t *testing.T) {
		s := newTestStore(t, pool, Config{Logger: quiet()})
		id := newRunID()
		_, err := s.CreateRuns(ctx, []batuta.NewRun{{ID: id, Workflow: "wf", CreatedAt: now, Event: batuta.Event{ID: "e"},
			Tasks: []batuta.TaskSpec{{Name: "x"}, {Name: "y"}, {Name: "j", Deps: []int{0, 1}, FireOn: batuta.TaskSucceeded}}}})
		require.NoError(t, err)
		p2 := p
		p2.Limit = 2
		cs, err := s.ClaimTasks(ctx, p2)
		require.NoError(t, err)
		require.Len(t, cs, 2)
		for _, c := range cs {
			require.NotZero(t, c.Token&tokenLinkBit, "%s has one dependent", c.Task)
		}
		res, js, err := s.CompleteTasksAndClaim(ctx, succeeded(cs[0], now), p)
		require.NoError(t, err)
		require.Equal(t, 1, res[0].Ready)
		require.Len(t, js, 1, "the join fires on the first success and is taken")
		require.Equal(t, "j", js[0].Task)
		require.Equal(t, int64(1), s.links.Load())
		require.Len(t, js[0].Upstream, 2)
		res, err = s.CompleteTasks(ctx, succeeded(js[0], now))
		require.NoError(t, err)
		require.Empty(t, res[0].RunFinished, "y is still running")
		res, more, err := s.CompleteTasksAndClaim(ctx, succeeded(cs[1], now), p)
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		require.Empty(t, more)
		require.Equal(t, batuta.RunSucceeded, res[0].RunFinished, "y's success finishes the run")
		require.Equal(t, int64(1), s.links.Load(), "declined")
		require.Equal(t, int64(1), s.steps.Load())
		var state, listed string
		require.NoError(t, pool.QueryRow(ctx, `SELECT r.state, e.state FROM `+s.schema+`.runs r JOIN `+s.schema+`.run_states e ON e.run_id = r.id WHERE r.id = $1`, id).Scan(&state, &listed))
		require.Equal(t, "succeeded", state)
		require.Equal(t, "succeeded", listed)
	})

	t.Run("canceled run", func(t *testing.T) {
		// The cancel finished b (canceled) without counting it down: a's
		// success is the run's last and finishes it, which the link
		// statement does not do.
		for _, noLink := range []bool{false, true} {
			s := newTestStore(t, pool, Config{Logger: quiet()})
			s.noLink = noLink
			id, a := stepChain(t, s, "e", 0, now, p)
			ok, err := s.CancelRun(ctx, id, "stop", now)
			require.NoError(t, err)
			require.True(t, ok)
			res, cs, err := s.CompleteTasksAndClaim(ctx, succeeded(a, now), p)
			require.NoError(t, err)
			require.NoError(t, res[0].Err)
			require.Empty(t, cs)
			require.Equal(t, batuta.RunCanceled, res[0].RunFinished, "noLink %v", noLink)
			require.Zero(t, s.links.Load())
			var state, listed string
			var left int
			require.NoError(t, pool.QueryRow(ctx, `SELECT r.state, e.state, r.tasks_left FROM `+s.schema+`.runs r JOIN `+s.schema+`.run_states e ON e.run_id = r.id WHERE r.id = $1`, id).Scan(&state, &listed, &left))
			require.Equal(t, []any{"canceled", "canceled", 0}, []any{state, listed, left})
		}
	})

	t.Run("wrong link bit", func(t *testing.T) {
		s := newTestStore(t, pool, Config{Logger: quiet()})
		id := newRunID()
		_, err := s.CreateRuns(ctx, []batuta.NewRun{{ID: id, Workflow: "wf", CreatedAt: now, Event: batuta.Event{ID: "e"},
			Tasks: []batuta.TaskSpec{{Name: "a"}, {Name: "b", Deps: []int{0}}, {Name: "c", Deps: []int{0}}}}})
		require.NoError(t, err)
		cs, err := s.ClaimTasks(ctx, p)
		require.NoError(t, err)
		require.Len(t, cs, 1)
		require.Zero(t, cs[0].Token&tokenLinkBit, "a has two dependents")
		cs[0].Token |= tokenLinkBit
		_, err = pool.Exec(ctx, `UPDATE `+s.schema+`.tasks SET token = $1 WHERE run_id = $2 AND name = 'a'`, cs[0].Token, id)
		require.NoError(t, err)
		res, next, err := s.CompleteTasksAndClaim(ctx, succeeded(cs[0], now), p)
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		require.Equal(t, 2, res[0].Ready)
		require.Len(t, next, 1, "the general way claims one of them")
		require.Zero(t, s.links.Load())
		require.Zero(t, s.steps.Load())
	})
}

// TestLinkCancelRace: runs canceled while workers step through them (the
// link statement, whose guard declines a success that would finish a
// canceled run) all end finished, their counters and run_states rows
// agreeing, with no task left behind and no completion refused.
func TestLinkCancelRace(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 16)
	// The lean step statement too, which finishes such a run itself.
	for _, noLink := range []bool{false, true} {
		t.Run(fmt.Sprintf("noLink=%v", noLink), func(t *testing.T) { linkCancelRace(t, pool, noLink) })
	}
}

func linkCancelRace(t *testing.T, pool *pgxpool.Pool, noLink bool) {
	ctx := context.Background()
	s := newTestStore(t, pool, Config{Logger: quiet()})
	s.noLink = noLink
	const runs, length, workers = 40, 20, 4
	chain := chainSpecs(length, "t%02d")
	ids := make([]string, runs)
	for i := range ids {
		ids[i] = newRunID()
	}
	errs := make(chan error, workers+runs/2)
	for i := 0; i < runs; i += 2 {
		// Every other run canceled once one to three of its tasks ran.
		go func() {
			errs <- func() error {
				for {
					var ran int
					if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+s.schema+`.tasks WHERE run_id = $1 AND state = 'succeeded'`, ids[i]).Scan(&ran); err != nil {
						return err
					}
					if ran >= 1+i%3 {
						break
					}
					time.Sleep(100 * time.Microsecond) // polling the run's progress, not waiting for an outcome
				}
				_, err := s.CancelRun(ctx, ids[i], "stop", time.Now())
				return err
			}()
		}()
	}
	for w := 0; w < workers; w++ {
		// Each worker creates its runs one at a time and works each to
		// its end (or its cancel) alone: no ready task waits, so the
		// steps go through the link statement.
		go func() {
			p := batuta.ClaimParams{Owner: fmt.Sprint("w", w), Workflows: []string{fmt.Sprint("wf", w)}, Limit: 1,
				Now: time.Now(), LeaseUntil: time.Now().Add(time.Hour)}
			errs <- func() error {
				for i := w; i < runs; i += workers {
					if _, err := s.CreateRuns(ctx, []batuta.NewRun{{ID: ids[i], Workflow: p.Workflows[0], CreatedAt: time.Now().Add(-time.Second),
						Event: batuta.Event{ID: fmt.Sprint(i)}, Tasks: chain}}); err != nil {
						return err
					}
					if err := workUntilIdle(ctx, s, p); err != nil {
						return err
					}
				}
				return nil
			}()
		}()
	}
	for w := 0; w < workers+runs/2; w++ {
		require.NoError(t, <-errs)
	}
	var bad []string
	rows, err := pool.Query(ctx, `SELECT r.id::text, r.state, e.state, r.tasks_left,
        (SELECT count(*) FROM `+s.schema+`.tasks t WHERE t.run_id = r.id AND t.state IN ('pending', 'running'))
    FROM `+s.schema+`.runs r JOIN `+s.schema+`.run_states e ON e.run_id = r.id`)
	require.NoError(t, err)
	canceled := 0
	for rows.Next() {
		var id, state, listed string
		var left, open int
		require.NoError(t, rows.Scan(&id, &state, &listed, &left, &open))
		if state == "canceled" {
			canceled++
		}
		if (state != "succeeded" && state != "canceled") || listed != state || left != 0 || open != 0 {
			bad = append(bad, fmt.Sprintf("%s: %s (listed %s), %d left, %d open", id, state, listed, left, open))
		}
	}
	require.NoError(t, rows.Err())
	require.Empty(t, bad)
	require.Positive(t, canceled, "no cancel landed while its run ran")
	require.Positive(t, s.steps.Load())
	require.Equal(t, noLink, s.links.Load() == 0)
	t.Logf("%d runs canceled; %d steps, %d through the link statement", canceled, s.steps.Load(), s.links.Load())
}

// chainSpecs returns a chain of n tasks, named by format from their
// positions, each depending on the one before.
func chainSpecs(n int, format string) []batuta.TaskSpec {
	chain := make([]batuta.TaskSpec, n)
	for i := range chain {
		chain[i].Name = fmt.Sprintf(format, i)
		if i > 0 {
			chain[i].Deps = []int{i - 1}
		}
	}
	return chain
}

// workUntilIdle claims and completes (succeeded) tasks as a worker does,
// the completion claiming the next, until a claim finds nothing.
func workUntilIdle(ctx context.Context, s *Store, p batuta.ClaimParams) error {
	cs, err := s.ClaimTasks(ctx, p)
	for err == nil && len(cs) > 0 {
		c := cs[0]
		var res []batuta.CompleteResult
		res, cs, err = s.CompleteTasksAndClaim(ctx, succeeded(c, time.Now()), p)
		if err == nil && res[0].Err != nil {
			err = fmt.Errorf("run %s task %s: %w", c.RunID, c.Task, res[0].Err)
		}
		if err == nil && len(cs) == 0 {
			cs, err = s.ClaimTasks(ctx, p)
		}
	}
	return err
}
