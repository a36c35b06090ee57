package batutapg

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// flushTableStats makes the table statistics of every connection of pool
// visible in pg_stat_user_tables: each backend flushes its pending counts
// as it goes idle after pg_stat_force_next_flush() (PostgreSQL 15), and
// holding all MaxConns connections at once reaches every backend the
// store used.
func flushTableStats(ctx context.Context, t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	var conns []*pgxpool.Conn
	for i := int32(0); i < pool.Config().MaxConns; i++ {
		c, err := pool.Acquire(ctx)
		require.NoError(t, err)
		conns = append(conns, c)
	}
	for _, c := range conns {
		_, err := c.Exec(ctx, "SELECT pg_stat_force_next_flush()")
		require.NoError(t, err)
	}
	for _, c := range conns {
		c.Release()
	}
}

// runUpdates returns the updates of schema.runs (schema quoted) and how many of them were
// HOT, as the statistics of every backend of pool count them.
func runUpdates(ctx context.Context, t testing.TB, pool *pgxpool.Pool, schema string) (upd, hot int64) {
	t.Helper()
	flushTableStats(ctx, t, pool)
	require.NoError(t, pool.QueryRow(ctx, `SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
		WHERE relid = $1::regclass`, schema+".runs").Scan(&upd, &hot))
	return upd, hot
}

// TestRunUpdatesAreHOT: the update that finishes a run (succeeded, failed,
// canceled) and the one RetryRun reopens it with are HOT updates (runs
// indexes no column that changes), and
// run_states follows runs: the same state and finish time for every run,
// and no row left once Prune deleted the runs.
func TestRunUpdatesAreHOT(t *testing.T) {
	t.Parallel()
	const n, canceled, failed = 120, 20, 20
	pool := storeTestPool(t, 4)
	s := newTestStore(t, pool, Config{DisableListen: true, Logger: quiet()})
	ctx := testCtx(t)
	now := time.Now().UTC().Truncate(time.Millisecond)
	// An update is HOT only if no indexed column changes and the new row
	// version fits on the row's page. The second is left out of the test:
	// fillfactor 10 leaves room for every version these updates write
	// (pruning the dead ones could be held back by the snapshot of any
	// other session of the shared database).
	_, err := pool.Exec(ctx, "ALTER TABLE "+s.schema+".runs SET (fillfactor = 10)")
	require.NoError(t, err)
	var ids []string
	for i := 0; i < n; i++ {
		id, _, err := s.CreateRun(ctx, newRunFor("hot", fmt.Sprintf("e%d", i), now, batuta.TaskSpec{Name: "a"}))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	upd0, hot0 := runUpdates(ctx, t, pool, s.schema)

	for _, id := range ids[:canceled] {
		ok, err := s.CancelRun(ctx, id, "stop", now)
		require.NoError(t, err)
		require.True(t, ok)
	}
	burn := func(at time.Time, fail map[string]bool) int {
		done := 0
		for {
			cs, err := s.ClaimTasks(ctx, batuta.ClaimParams{Owner: "w", Limit: 50, Now: at, LeaseUntil: at.Add(time.Minute)})
			require.NoError(t, err)
			if len(cs) == 0 {
				return done
			}
			for _, c := range cs {
				comp := succeed(c, at, "1")
				if fail[c.RunID] {
					comp = batuta.Completion{ClaimRef: c.Ref(), Outcome: batuta.OutcomeFailed, Attempt: c.Attempt, Error: "boom", StartedAt: at, FinishedAt: at}
				}
				res := complete(t, s, comp)
				require.NotEmpty(t, res.RunFinished)
				done++
			}
		}
	}
	fail := map[string]bool{}
	for _, id := range ids[canceled : canceled+failed] {
		fail[id] = true
	}
	require.Equal(t, n-canceled, burn(now, fail))
	// Each run was finished once: all HOT.
	upd1, hot1 := runUpdates(ctx, t, pool, s.schema)
	t.Logf("runs finished: %d updates, %d HOT", upd1-upd0, hot1-hot0)
	require.Equal(t, int64(n), upd1-upd0)
	require.Equal(t, upd1-upd0, hot1-hot0, "every update finishing a run is HOT")
	later := now.Add(time.Second)
	for _, id := range ids[:canceled+failed] {
		_, err := s.RetryRun(ctx, id, batuta.RetryParams{Now: later})
		require.NoError(t, err)
	}
	require.Equal(t, canceled+failed, burn(later, nil))

	// Reopened and finished again: before run_states, none of these was
	// HOT either (both change state and finished_at).
	upd2, hot2 := runUpdates(ctx, t, pool, s.schema)
	upd2, hot2 = upd2-upd1, hot2-hot1
	t.Logf("runs reopened and finished again: %d updates, %d HOT", upd2, hot2)
	require.Equal(t, int64(2*(canceled+failed)), upd2)
	require.Equal(t, upd2, hot2, "reopening and finishing a run are HOT updates")

	var diff, states int
	require.NoError(t, s.queryRow(ctx, `SELECT count(*) FILTER (WHERE r.id IS NULL OR e.run_id IS NULL
			OR (r.workflow, r.state, r.created_at, r.finished_at) IS DISTINCT FROM (e.workflow, e.state, e.created_at, e.finished_at)),
		count(DISTINCT e.state)
		FROM `+s.schema+`.runs r FULL JOIN `+s.schema+`.run_states e ON e.run_id = r.id`, nil, &diff, &states))
	require.Zero(t, diff, "run_states differs from runs")
	require.Equal(t, 1, states, "every run succeeded in the end")

	pruned, err := s.Prune(ctx, batuta.PrunePolicy{Before: later.Add(time.Hour), BatchSize: 50})
	require.NoError(t, err)
	require.Equal(t, n, pruned)
	var left int
	require.NoError(t, s.queryRow(ctx, `SELECT count(*) FROM `+s.schema+`.run_states`, nil, &left))
	require.Zero(t, left, "Prune deletes the runs' run_states rows")
}

// TestRunStatesMigrationBackfills: a schema at version 5 holding a failed
// and an unfinished run is upgraded by New: run_states holds both (the
// listing by state and the statistics find them), and the unfinished one,
// completed, moves to succeeded there.
func TestRunStatesMigrationBackfills(t *testing.T) {
	t.Parallel()
	pool := storeTestPool(t, 4)
	schema := "batuta_up6_" + storeSuffix()
	dropSchemaAtCleanup(t, pool, schema)
	ctx := testCtx(t)
	ms, err := migrations()
	require.NoError(t, err)
	var v5 []migration
	for _, m := range ms {
		if m.version <= 5 {
			v5 = append(v5, m)
		}
	}
	require.Len(t, v5, 5)
	require.NoError(t, migrate(ctx, pool, schema, v5))
	now := time.Now().UTC().Truncate(time.Microsecond)
	failed, open := newRunID(), newRunID()
	_, err = pool.Exec(ctx, `INSERT INTO `+quoteIdent(schema)+`.runs (id, workflow, event_id, event, created_at, tasks_total, tasks_left, state, error, finished_at)
		VALUES ($1::uuid, 'old', 'e1', '{}', $3, 1, 0, 'failed', 'boom', $4), ($2::uuid, 'old', 'e2', '{}', $3, 1, 1, 'active', '', NULL)`,
		failed, open, now.Add(-2*time.Second), now.Add(-time.Second))
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO `+quoteIdent(schema)+`.tasks (run_id, idx, name, workflow, deps, dependents, pending_deps, solo, state, due_at, error)
		VALUES ($1::uuid, 0, 't', 'old', '{}', '{}', 0, true, 'failed', $3, 'boom'), ($2::uuid, 0, 't', 'old', '{}', '{}', 0, true, 'pending', $3, NULL)`,
		failed, open, now.Add(-time.Minute))
	require.NoError(t, err)
	s, err := New(ctx, pool, Config{Schema: schema, Logger: quiet(), DisableListen: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	for st, id := range map[batuta.RunState]string{batuta.RunFailed: failed, batuta.RunPending: open} {
		runs, err := s.ListRuns(ctx, batuta.RunFilter{State: st})
		require.NoError(t, err)
		require.Len(t, runs, 1, st)
		require.Equal(t, id, runs[0].ID, st)
	}
	stats, err := s.WorkflowStats(ctx, now.Add(-time.Hour), now.Add(time.Hour))
	require.NoError(t, err)
	require.Len(t, stats, 1)
	require.Equal(t, batuta.WorkflowStats{Workflow: "old", Failed: 1, Pending: 1, DurationP50: time.Second, DurationP95: time.Second},
		withoutOldest(stats[0]))

	c := claimOne(t, s, now)
	require.Equal(t, open, c.RunID)
	require.Equal(t, batuta.RunSucceeded, complete(t, s, succeed(c, now, "1")).RunFinished)
	stats, err = s.WorkflowStats(ctx, now.Add(-time.Hour), now.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, []batuta.WorkflowStats{{Workflow: "old", Succeeded: 1, Failed: 1, DurationP50: time.Second, DurationP95: 2 * time.Second}}, stats)
}
