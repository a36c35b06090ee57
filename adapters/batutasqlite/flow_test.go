package batutasqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/batuta-dev/batuta"
)

// fbase is the flow tests' clock origin: they pass explicit times.
var fbase = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func oneTask(name string) []batuta.TaskSpec { return []batuta.TaskSpec{{Name: name}} }

func newFlowRun(wf, ev string, at time.Time, tasks []batuta.TaskSpec) batuta.NewRun {
	return batuta.NewRun{
		ID: fmt.Sprintf("%s-%s-%d", wf, ev, at.UnixNano()), Workflow: wf, Tasks: tasks, CreatedAt: at,
		Event: batuta.Event{ID: ev, Time: at},
	}
}

func claimAt(t *testing.T, s batuta.Store, now time.Time, limit int, wfs ...string) []batuta.Claim {
	t.Helper()
	cs, err := s.ClaimTasks(context.Background(), batuta.ClaimParams{Owner: "t", Workflows: wfs, Limit: limit, Now: now, LeaseUntil: now.Add(time.Minute)})
	require.NoError(t, err)
	return cs
}

func completeAll(t *testing.T, s batuta.Store, cs []batuta.Claim, oc batuta.Outcome, at time.Time) []batuta.CompleteResult {
	t.Helper()
	comps := make([]batuta.Completion, len(cs))
	for i, c := range cs {
		comps[i] = batuta.Completion{ClaimRef: c.Ref(), Outcome: oc, Attempt: c.Attempt, StartedAt: at, FinishedAt: at}
	}
	res, err := s.CompleteTasks(context.Background(), comps)
	require.NoError(t, err)
	for _, r := range res {
		require.NoError(t, r.Err)
	}
	return res
}

// checkFlowCounters checks that the counters the flow tables keep agree
// with the rows they count: each concurrency group's admitted, eligible and
// member counts with its runs' adm, each task-level group's running count
// with its running tasks, and the active run count.
func checkFlowCounters(t *testing.T, db *sql.DB) {
	t.Helper()
	var bad []string
	query := func(q string) {
		rows, err := db.Query(q)
		require.NoError(t, err)
		defer func() { _ = rows.Close() }()
		for rows.Next() {
			var s string
			require.NoError(t, rows.Scan(&s))
			bad = append(bad, s)
		}
		require.NoError(t, rows.Err())
	}
	query(`WITH m AS (
    SELECT concurrency_key AS key, count(*) FILTER (WHERE adm = 1) AS admitted,
           count(*) FILTER (WHERE adm = 2) AS eligible, count(*) AS members
    FROM batuta_runs WHERE adm > 0 GROUP BY concurrency_key)
SELECT format('group %s: stored %d/%d/%d/max %d, counted %d/%d/%d', coalesce(g.key, m.key),
       coalesce(g.admitted, -1), coalesce(g.eligible, -1), coalesce(g.members, -1), coalesce(g.max, -1),
       coalesce(m.admitted, 0), coalesce(m.eligible, 0), coalesce(m.members, 0))
FROM batuta_groups g FULL JOIN m ON m.key = g.key
WHERE g.key IS NULL OR m.key IS NULL OR g.admitted <> m.admitted OR g.eligible <> m.eligible
   OR g.members <> m.members OR g.admitted > g.max`)
	query(`WITH m AS (
    SELECT concurrency_key AS key, count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'pending' AND gated = 2) AS parked
    FROM batuta_tasks WHERE concurrency_key IS NOT NULL AND (state = 'running' OR gated = 2)
    GROUP BY concurrency_key)
SELECT format('task group %s: stored %d/%d, counted %d/%d', coalesce(g.key, m.key), coalesce(g.running, -1), coalesce(g.parked, -1),
       coalesce(m.running, 0), coalesce(m.parked, 0))
FROM batuta_task_groups g FULL JOIN m ON m.key = g.key
WHERE g.key IS NULL OR m.key IS NULL OR g.running <> m.running OR g.parked <> m.parked`)
	query(`SELECT format('task %s/%d: gated %d in state %s', run_id, idx, gated, state) FROM batuta_tasks
WHERE gated = 2 AND state <> 'pending'`)
	query(`SELECT format('active_runs %d, unfinished runs %d', value, (SELECT count(*) FROM batuta_runs WHERE finished_at IS NULL))
FROM batuta_counters WHERE name = 'active_runs' AND value <> (SELECT count(*) FROM batuta_runs WHERE finished_at IS NULL)`)
	query(`SELECT format('run %s finished with adm %d', id, adm) FROM batuta_runs WHERE finished_at IS NOT NULL AND adm <> 0`)
	require.Empty(t, bad, "flow counters disagree with the rows")
}

// TestFlowMigrateFromVersion2 builds a database as the previous build (schema
// version 2) left it, with a run ready to claim, one waiting for a retry and
// one whose task was running, then opens it: migration 0003 upgrades it in
// place and every run goes on as before, the retry at its time.
func TestFlowMigrateFromVersion2(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v2.db")
	db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	require.NoError(t, migrateUpTo(ctx, conn, quietLogger(), 2))
	require.NoError(t, conn.Close())
	created := fbase.UnixNano()
	lead := fbase.Add(-newTaskLead).UnixNano()
	retryAt := fbase.Add(time.Hour)
	retryAttempt := `[{"number":1,"started_at":"2030-01-02T03:04:05Z","finished_at":"2030-01-02T03:04:05Z","outcome":"retry","error":"boom"}]`
	for _, q := range []struct {
		sql  string
		args []any
	}{
		// r1: a -> b, a ready.
		{`INSERT INTO batuta_runs (id, workflow, event_id, event, state, created_at, unfinished_tasks)
			VALUES ('r1', 'wf', 'e1', '{"id":"e1"}', 'pending', ?, 2)`, []any{created}},
		{`INSERT INTO batuta_tasks (run_id, idx, name, workflow, deps, dependents, state, pending_deps, due_at)
			VALUES ('r1', 0, 'a', 'wf', '[]', '[1]', 'pending', 0, ?1), ('r1', 1, 'b', 'wf', '[0]', '[]', 'pending', 1, ?1)`, []any{lead}},
		// r2: x failed once, retries in an hour.
		{`INSERT INTO batuta_runs (id, workflow, event_id, event, state, created_at, started_at, unfinished_tasks)
			VALUES ('r2', 'wf', 'e2', '{"id":"e2"}', 'running', ?1, ?1, 1)`, []any{created}},
		{`INSERT INTO batuta_tasks (run_id, idx, name, workflow, state, pending_deps, due_at, attempts_spent, attempts)
			VALUES ('r2', 0, 'x', 'wf', 'pending', 0, ?, 1, ?)`, []any{retryAt.UnixNano(), retryAttempt}},
		// r3: y was running when the old build stopped.
		{`INSERT INTO batuta_runs (id, workflow, event_id, event, state, created_at, started_at, unfinished_tasks)
			VALUES ('r3', 'wf', 'e3', '{"id":"e3"}', 'running', ?1, ?1, 1)`, []any{created}},
		{`INSERT INTO batuta_tasks (run_id, idx, name, workflow, state, pending_deps, due_at, token, owner, lease_until)
			VALUES ('r3', 0, 'y', 'wf', 'running', 0, ?, 5, 'old', ?)`, []any{lead, fbase.Add(time.Minute).UnixNano()}},
		{`UPDATE batuta_counters SET value = 3 WHERE name = 'active_runs'`, nil},
		{`UPDATE batuta_counters SET value = 5 WHERE name = 'lease_token'`, nil},
	} {
		_, err := db.ExecContext(ctx, q.sql, q.args...)
		require.NoError(t, err, q.sql)
	}
	require.NoError(t, db.Close())

	s, err := Open(ctx, path, Config{Logger: quietLogger()})
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	var v int
	require.NoError(t, s.db.QueryRowContext(ctx, `SELECT max(version) FROM batuta_migrations`).Scan(&v))
	require.Equal(t, SchemaVersion(), v)
	checkFlowCounters(t, s.db)

	r2, err := s.GetRun(ctx, "r2")
	require.NoError(t, err)
	require.True(t, r2.Task("x").NotBefore.Equal(retryAt), "retry's NotBefore %v", r2.Task("x").NotBefore)
	r1, err := s.GetRun(ctx, "r1")
	require.NoError(t, err)
	require.True(t, r1.Task("a").NotBefore.IsZero())
	require.True(t, r1.StartAt.IsZero())
	due, err := s.NextDue(ctx, []string{"wf"}, fbase)
	require.NoError(t, err)
	require.True(t, due.Equal(retryAt), "NextDue %v, want the retry at %v", due, retryAt)

	cs := claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1)
	require.Equal(t, "r1", cs[0].RunID)
	require.Equal(t, "a", cs[0].Task)
	require.Greater(t, cs[0].Token, int64(5))
	completeAll(t, s, cs, batuta.OutcomeSucceeded, fbase)
	cs = claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1)
	require.Equal(t, "b", cs[0].Task)
	completeAll(t, s, cs, batuta.OutcomeSucceeded, fbase)

	n, f, err := s.RescueExpired(ctx, fbase.Add(2*time.Minute), 3)
	require.NoError(t, err)
	require.Equal(t, [2]int{1, 0}, [2]int{n, f})
	cs = claimAt(t, s, fbase.Add(2*time.Minute), 10)
	require.Len(t, cs, 1)
	require.Equal(t, "r3", cs[0].RunID)
	completeAll(t, s, cs, batuta.OutcomeSucceeded, fbase)

	require.Empty(t, claimAt(t, s, retryAt.Add(-time.Millisecond), 10), "the retry is not due yet")
	cs = claimAt(t, s, retryAt, 10)
	require.Len(t, cs, 1)
	require.Equal(t, "r2", cs[0].RunID)
	require.Equal(t, 2, cs[0].Attempt)
	completeAll(t, s, cs, batuta.OutcomeSucceeded, retryAt)
	for _, id := range []string{"r1", "r2", "r3"} {
		r, err := s.GetRun(ctx, id)
		require.NoError(t, err)
		require.Equal(t, batuta.RunSucceeded, r.State, id)
	}
	checkFlowCounters(t, s.db)
}

// TestFlowStateSurvivesReopen: admitted runs keep their slots, waiting runs
// their place, running tasks of a task-level group their slots, and a
// paused workflow its held tasks, across a close and reopen of the file.
func TestFlowStateSurvivesReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, path := openTemp(t)
	k := &batuta.ConcurrencySpec{Key: "wf/k", Max: 1}
	var ids []string
	for i := 0; i < 3; i++ {
		nr := newFlowRun("wf", fmt.Sprint("q", i), fbase.Add(time.Duration(i)*time.Millisecond), oneTask("x"))
		nr.Concurrency = k
		id, _, err := s.CreateRun(ctx, nr)
		require.NoError(t, err)
		ids = append(ids, id)
	}
	limited := []batuta.TaskSpec{{Name: "y", Concurrency: &batuta.ConcurrencySpec{Key: "tg/y", Max: 1}}}
	var tids []string
	for i := 0; i < 2; i++ {
		id, _, err := s.CreateRun(ctx, newFlowRun("tg", fmt.Sprint("t", i), fbase.Add(time.Duration(i)*time.Millisecond), limited))
		require.NoError(t, err)
		tids = append(tids, id)
	}
	_, err := s.SetPaused(ctx, "p", true)
	require.NoError(t, err)
	pid, _, err := s.CreateRun(ctx, newFlowRun("p", "p0", fbase, oneTask("z")))
	require.NoError(t, err)

	cs := claimAt(t, s, fbase, 10)
	require.ElementsMatch(t, []string{ids[0], tids[0]}, []string{cs[0].RunID, cs[1].RunID}, "claims %v", cs)
	checkFlowCounters(t, s.db)

	require.NoError(t, s.Close())
	s2, err := Open(ctx, path, Config{Logger: quietLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s2.Close() })
	checkFlowCounters(t, s2.db)
	require.Empty(t, claimAt(t, s2, fbase, 10), "every slot is taken and p is paused")
	ws, err := s2.PausedWorkflows(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"p"}, ws)

	// The claims made before the reopen still hold (same tokens).
	completeAll(t, s2, cs, batuta.OutcomeSucceeded, fbase)
	next := claimAt(t, s2, fbase, 10)
	require.ElementsMatch(t, []string{ids[1], tids[1]}, []string{next[0].RunID, next[1].RunID})
	completeAll(t, s2, next, batuta.OutcomeSucceeded, fbase)
	_, err = s2.SetPaused(ctx, "p", false)
	require.NoError(t, err)
	next = claimAt(t, s2, fbase, 10)
	require.ElementsMatch(t, []string{ids[2], pid}, []string{next[0].RunID, next[1].RunID})
	completeAll(t, s2, next, batuta.OutcomeSucceeded, fbase)
	checkFlowCounters(t, s2.db)
	var groups, taskGroups int
	require.NoError(t, s2.db.QueryRow(`SELECT (SELECT count(*) FROM batuta_groups), (SELECT count(*) FROM batuta_task_groups)`).Scan(&groups, &taskGroups))
	require.Zero(t, groups, "a group without members is deleted")
	require.Zero(t, taskGroups, "a task group with nothing running or parked is deleted")
}

// TestFlowClaimIndexHoldsNoWaitingWork: delayed runs and runs waiting for a
// slot have no entry in the claim index, and runs of a paused workflow have
// none once a claim met them, so claims read none of them again; the claim,
// promotion, admission and NextDue statements use their indexes.
func TestFlowClaimIndexHoldsNoWaitingWork(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	const n = 50
	var batch []batuta.NewRun
	k := &batuta.ConcurrencySpec{Key: "q/k", Max: 1}
	for i := 0; i < n; i++ {
		at := fbase.Add(time.Duration(i) * time.Millisecond)
		d := newFlowRun("d", fmt.Sprint(i), at, oneTask("x"))
		d.StartAt = fbase.Add(time.Hour)
		q := newFlowRun("q", fmt.Sprint(i), at, oneTask("x"))
		q.Concurrency = k
		p := newFlowRun("p", fmt.Sprint(i), at, oneTask("x"))
		batch = append(batch, d, q, p)
	}
	_, err := s.SetPaused(ctx, "p", true)
	require.NoError(t, err)
	_, err = s.CreateRuns(ctx, batch)
	require.NoError(t, err)
	cs := claimAt(t, s, fbase, 100)
	require.Len(t, cs, 1, "one run of the group is admitted")
	var entries int
	require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM batuta_tasks INDEXED BY batuta_tasks_claim
    WHERE state = 'pending' AND pending_deps = 0 AND delayed = 0 AND paused = 0 AND gated = 0`).Scan(&entries))
	require.Zero(t, entries, "waiting tasks in the claim index")
	var delayed int
	require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM batuta_tasks INDEXED BY batuta_tasks_delayed
    WHERE state = 'pending' AND delayed = 1 AND paused = 0`).Scan(&delayed))
	require.Equal(t, n, delayed)

	plan := func(q string, args ...any) string {
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
	for _, c := range []struct {
		sql, index string
		args       []any
	}{
		{claimReadySQL, "batuta_tasks_claim", []any{1, nil, 1}},
		{promoteSQL, "batuta_tasks_delayed", []any{1, 1}},
		{flowProbeSQL, "batuta_paused", []any{1}},
		{nextDueSQL, "batuta_tasks_delayed_wf", []any{1, `["a","b"]`}},
		{nextDueAllSQL, "batuta_tasks_delayed", []any{1}},
		{admitGroupsSQL, "batuta_groups_admit", []any{1}},
		{groupHeadSQL, "batuta_runs_waiting", []any{"k"}},
		{unparkSQL, "batuta_tasks_parked", []any{"k"}},
		{flowProbeSQL, "batuta_tasks_delayed", []any{1}},
		{flowProbeSQL, "batuta_groups_admit", []any{1}},
	} {
		p := plan(c.sql, c.args...)
		require.Contains(t, p, c.index, "plan of %s", firstLine(c.sql))
		require.NotContains(t, p, "TEMP B-TREE", "plan of %s sorts", firstLine(c.sql))
	}
}

// TestFlowTaskGroupParks: a claim that finds a task-level group full parks
// the group's waiting tasks (out of the claim index, read once), each freed
// slot unparks one, in order; canceling a run whose task had just been
// unparked passes the wake-up on, so no parked task is stranded.
func TestFlowTaskGroupParks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	limited := []batuta.TaskSpec{{Name: "x", Concurrency: &batuta.ConcurrencySpec{Key: "tg/x", Max: 1}}}
	var ids []string
	for i := 0; i < 40; i++ {
		id, _, err := s.CreateRun(ctx, newFlowRun("tg", fmt.Sprint(i), fbase.Add(time.Duration(i)*time.Millisecond), limited))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	inIndex := func() int {
		var n int
		require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM batuta_tasks INDEXED BY batuta_tasks_claim
    WHERE state = 'pending' AND pending_deps = 0 AND delayed = 0 AND paused = 0 AND gated = 0`).Scan(&n))
		return n
	}
	cs := claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1)
	require.Equal(t, ids[0], cs[0].RunID)
	require.Zero(t, inIndex(), "the full group's tasks are parked")
	checkFlowCounters(t, s.db)

	// Each completion unparks the next task, in creation order.
	for i := 1; i < 5; i++ {
		completeAll(t, s, cs, batuta.OutcomeSucceeded, fbase)
		require.Equal(t, 1, inIndex())
		cs = claimAt(t, s, fbase, 10)
		require.Len(t, cs, 1)
		require.Equal(t, ids[i], cs[0].RunID)
		checkFlowCounters(t, s.db)
	}
	// The task unparked by this completion is canceled before anyone
	// claims it: the next parked one takes its place.
	completeAll(t, s, cs, batuta.OutcomeSucceeded, fbase)
	ok, err := s.CancelRun(ctx, ids[5], "not needed", fbase)
	require.NoError(t, err)
	require.True(t, ok)
	checkFlowCounters(t, s.db)
	// A parked task's run canceled: it leaves the parked count.
	ok, err = s.CancelRun(ctx, ids[7], "not needed", fbase)
	require.NoError(t, err)
	require.True(t, ok)
	checkFlowCounters(t, s.db)
	cs = claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1)
	require.Equal(t, ids[6], cs[0].RunID)

	// A rescue frees the slot too; then the rest runs one at a time.
	n, _, err := s.RescueExpired(ctx, fbase.Add(2*time.Minute), 5)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	done := 0
	now := fbase.Add(2 * time.Minute)
	for round := 0; round < 100; round++ {
		cs = claimAt(t, s, now, 10)
		if len(cs) == 0 {
			break
		}
		require.Len(t, cs, 1, "group over its Max")
		for _, r := range completeAll(t, s, cs, batuta.OutcomeSucceeded, now) {
			if r.RunFinished != "" {
				done++
			}
		}
	}
	require.Equal(t, 40-6-1, done) // 5 finished before, 2 canceled
	checkFlowCounters(t, s.db)
	var groups int
	require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM batuta_task_groups`).Scan(&groups))
	require.Zero(t, groups)
}

// TestFlowClaimWorkIsBounded: one claim promotes at most promoteBatch due
// tasks (earliest first) and parks at most maxParks tasks of full groups;
// the next claims go on where it stopped.
func TestFlowClaimWorkIsBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	count := func(q string) int {
		var n int
		require.NoError(t, s.db.QueryRow(q).Scan(&n))
		return n
	}
	var batch []batuta.NewRun
	for i := 0; i < promoteBatch*2+100; i++ {
		nr := newFlowRun("d", fmt.Sprint(i), fbase, oneTask("x"))
		nr.StartAt = fbase.Add(time.Minute + time.Duration(i)*time.Microsecond)
		batch = append(batch, nr)
	}
	_, err := s.CreateRuns(ctx, batch)
	require.NoError(t, err)
	due := fbase.Add(time.Hour)
	delayed := `SELECT count(*) FROM batuta_tasks WHERE delayed = 1`
	cs := claimAt(t, s, due, 10)
	require.Len(t, cs, 10)
	require.Equal(t, batch[0].ID, cs[0].RunID, "earliest start first")
	require.Equal(t, promoteBatch+100, count(delayed))
	claimAt(t, s, due, 10)
	require.Equal(t, 100, count(delayed))
	claimAt(t, s, due, 10)
	require.Zero(t, count(delayed))

	limited := []batuta.TaskSpec{{Name: "x", Concurrency: &batuta.ConcurrencySpec{Key: "tg/x", Max: 1}}}
	batch = batch[:0]
	for i := 0; i < maxParks+500; i++ {
		batch = append(batch, newFlowRun("tg", fmt.Sprint(i), fbase.Add(-time.Hour), limited))
	}
	_, err = s.CreateRuns(ctx, batch)
	require.NoError(t, err)
	free, _, err := s.CreateRun(ctx, newFlowRun("free", "f", fbase.Add(-time.Hour+time.Millisecond), oneTask("y")))
	require.NoError(t, err)
	cs = claimAt(t, s, due, 1, "tg", "free")
	require.Len(t, cs, 1)
	require.Equal(t, batch[0].ID, cs[0].RunID)
	// The next claim parks maxParks tasks, claims nothing and wakes
	// claimers; the one after parks the rest and reaches the free task.
	for len(s.WorkAvailable()) > 0 {
		<-s.WorkAvailable()
	}
	require.Empty(t, claimAt(t, s, due, 1, "tg", "free"))
	require.Equal(t, maxParks, count(`SELECT count(*) FROM batuta_tasks WHERE gated = 2`))
	require.Len(t, s.WorkAvailable(), 1, "a claim that stopped parking early signals work")
	cs = claimAt(t, s, due, 1, "tg", "free")
	require.Len(t, cs, 1)
	require.Equal(t, free, cs[0].RunID, "the free task behind a full group's backlog")
	require.Equal(t, maxParks+499, count(`SELECT count(*) FROM batuta_tasks WHERE gated = 2`))
	checkFlowCounters(t, s.db)
}

// TestFlowPauseHoldsLazily: a pause writes no task but the delayed ones;
// tasks that become claimable while the workflow is paused (a retry coming
// due, a release, a new run) are held by the claims and promotions that
// meet them, never claimed, and NextDue ignores them; a resume releases
// them all.
func TestFlowPauseHoldsLazily(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	create := func(ev string, startAt time.Time) string {
		nr := newFlowRun("wf", ev, fbase, oneTask("x"))
		nr.StartAt = startAt
		id, _, err := s.CreateRun(ctx, nr)
		require.NoError(t, err)
		return id
	}
	retried, released := create("retried", time.Time{}), create("released", time.Time{})
	delayed := create("delayed", fbase.Add(time.Hour))
	cs := claimAt(t, s, fbase, 10)
	require.Len(t, cs, 2)
	_, err := s.SetPaused(ctx, "wf", true)
	require.NoError(t, err)
	var held int
	require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM batuta_tasks WHERE paused = 1`).Scan(&held))
	require.Equal(t, 1, held, "the pause holds the delayed task only")
	fresh := create("fresh", time.Time{})
	for _, c := range cs {
		comp := batuta.Completion{ClaimRef: c.Ref(), Attempt: c.Attempt, Outcome: batuta.OutcomeRelease, FinishedAt: fbase}
		if c.RunID == retried {
			comp.Outcome, comp.StartedAt, comp.RetryAt, comp.Error = batuta.OutcomeRetry, fbase, fbase.Add(time.Minute), "again"
		}
		res, err := s.CompleteTasks(ctx, []batuta.Completion{comp})
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
	}
	due, err := s.NextDue(ctx, []string{"wf"}, fbase)
	require.NoError(t, err)
	require.True(t, due.IsZero(), "NextDue of a paused workflow: %v", due)
	require.Empty(t, claimAt(t, s, fbase.Add(2*time.Hour), 10), "paused")
	require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM batuta_tasks WHERE paused = 1`).Scan(&held))
	require.Equal(t, 4, held, "every task met while paused is held")
	_, err = s.SetPaused(ctx, "wf", false)
	require.NoError(t, err)
	due, err = s.NextDue(ctx, []string{"wf"}, fbase)
	require.NoError(t, err)
	require.True(t, due.Equal(fbase.Add(time.Minute)), "NextDue after resume: %v", due)
	cs = claimAt(t, s, fbase.Add(2*time.Hour), 10)
	var got []string
	for _, c := range cs {
		got = append(got, c.RunID)
	}
	require.ElementsMatch(t, []string{retried, released, delayed, fresh}, got)
	checkFlowCounters(t, s.db)
}

// TestFlowCancelInProgressSkipsCanceledRuns: a run of a CancelInProgress
// group canceled by CancelRun while its task runs no longer counts: a new
// run takes its place without canceling another.
func TestFlowCancelInProgressSkipsCanceledRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	spec := &batuta.ConcurrencySpec{Key: "wf/k", Max: 1, Strategy: batuta.ConcurrencyCancelInProgress}
	r1 := newFlowRun("wf", "r1", fbase, oneTask("x"))
	r1.Concurrency = spec
	_, _, err := s.CreateRun(ctx, r1)
	require.NoError(t, err)
	cs := claimAt(t, s, fbase, 10)
	require.Len(t, cs, 1)
	ok, err := s.CancelRun(ctx, r1.ID, "stop", fbase)
	require.NoError(t, err)
	require.True(t, ok)
	checkFlowCounters(t, s.db)
	r2 := newFlowRun("wf", "r2", fbase.Add(time.Millisecond), oneTask("x"))
	r2.Concurrency = spec
	res, err := s.CreateRuns(ctx, []batuta.NewRun{r2})
	require.NoError(t, err)
	require.True(t, res[0].Created)
	require.Empty(t, res[0].Canceled, "the canceled run still counted")
	cs2 := claimAt(t, s, fbase, 10)
	require.Len(t, cs2, 1)
	require.Equal(t, r2.ID, cs2[0].RunID)
	res2 := completeAll(t, s, cs, batuta.OutcomeCanceled, fbase)
	require.Equal(t, batuta.RunCanceled, res2[0].RunFinished)
	checkFlowCounters(t, s.db)
}

// TestFlowMaxActiveLetsMergesIn: at MaxActive an event merged into a
// debounced run (or a duplicate) adds no run and is accepted, through
// CreateRun and CreateRuns; a batch that would add a run is refused whole.
func TestFlowMaxActiveLetsMergesIn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := openTemp(t)
	mk := func(ev string, at time.Time, key string) batuta.NewRun {
		nr := newFlowRun("wf", ev, at, oneTask("x"))
		nr.MaxActive = 1
		nr.Debounce = &batuta.DebounceSpec{Key: key, Window: time.Minute, MaxWait: time.Hour}
		return nr
	}
	first := mk("e1", fbase, "d")
	_, created, err := s.CreateRun(ctx, first)
	require.NoError(t, err)
	require.True(t, created)
	id, created, err := s.CreateRun(ctx, mk("e2", fbase.Add(time.Second), "d"))
	require.NoError(t, err, "a merge at MaxActive")
	require.False(t, created)
	require.Equal(t, first.ID, id)
	_, _, err = s.CreateRun(ctx, mk("o1", fbase.Add(2*time.Second), "other"))
	require.ErrorIs(t, err, batuta.ErrBusy, "a new debounced run at MaxActive")
	res, err := s.CreateRuns(ctx, []batuta.NewRun{mk("e3", fbase.Add(3*time.Second), "d"), mk("e3", fbase.Add(3*time.Second), "d")})
	require.NoError(t, err, "a batch of a merge and a duplicate at MaxActive")
	require.True(t, res[0].Debounced)
	require.False(t, res[1].Created)
	_, err = s.CreateRuns(ctx, []batuta.NewRun{mk("e4", fbase.Add(4*time.Second), "d"), mk("o2", fbase.Add(4*time.Second), "other")})
	require.ErrorIs(t, err, batuta.ErrBusy)
	r, err := s.GetRun(ctx, first.ID)
	require.NoError(t, err)
	require.Equal(t, "e3", r.Event.ID, "the refused batch's merge was rolled back")
	require.True(t, r.StartAt.Equal(fbase.Add(3*time.Second+time.Minute)))
	_, err = s.FindRun(ctx, "wf", "o2")
	require.ErrorIs(t, err, batuta.ErrRunNotFound)
	checkFlowCounters(t, s.db)
}
