package batutasqlite

import (
	"context"
	"database/sql"
	"fmt"
)

// statements are the store's hot statements, prepared once on the write
// connection. Reads run on pooled connections and are not prepared here.
type statements struct {
	begin      *sql.Stmt
	commit     *sql.Stmt
	savepoint  *sql.Stmt
	release    *sql.Stmt
	rollbackTo *sql.Stmt

	insertRun     *sql.Stmt
	insertTask    *sql.Stmt
	runByKey      *sql.Stmt
	activeRuns    *sql.Stmt
	addActiveRuns *sql.Stmt

	claimReady  *sql.Stmt
	claimTask   *sql.Stmt
	startRun    *sql.Stmt
	nextTokens  *sql.Stmt
	upstream    *sql.Stmt
	extendLease *sql.Stmt
	runCanceled *sql.Stmt

	claimedTask *sql.Stmt
	finishTask  *sql.Stmt
	countDown   *sql.Stmt
	taskDone    *sql.Stmt
	finishRun   *sql.Stmt

	expired     *sql.Stmt
	rescueTask  *sql.Stmt
	cancelRun   *sql.Stmt
	cancelTasks *sql.Stmt
	runState    *sql.Stmt
	recordTick  *sql.Stmt
}

// Column lists shared by the statements and the scanners.
const (
	runColumns  = `id, workflow, event, state, created_at, started_at, finished_at, deadline, error`
	taskColumns = `run_id, idx, name, state, deps, output, error, attempts, rescues`
)

func prepareStatements(ctx context.Context, c *sql.Conn) (*statements, error) {
	st := &statements{}
	list := []struct {
		dst **sql.Stmt
		sql string
	}{
		{&st.begin, `BEGIN IMMEDIATE`},
		{&st.commit, `COMMIT`},
		{&st.savepoint, `SAVEPOINT batuta_write`},
		{&st.release, `RELEASE batuta_write`},
		{&st.rollbackTo, `ROLLBACK TO batuta_write`},

		{&st.insertRun, `INSERT INTO batuta_runs
    (id, workflow, event_id, event, state, created_at, deadline, unfinished_tasks)
    VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)
    ON CONFLICT (workflow, event_id) DO NOTHING`},
		{&st.insertTask, `INSERT INTO batuta_tasks
    (run_id, idx, name, workflow, deps, dependents, state, pending_deps, due_at, fire_on)
    VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)`},
		{&st.runByKey, `SELECT id FROM batuta_runs WHERE workflow = ? AND event_id = ?`},
		{&st.activeRuns, `SELECT value FROM batuta_counters WHERE name = 'active_runs'`},
		{&st.addActiveRuns, `UPDATE batuta_counters SET value = value + ? WHERE name = 'active_runs'`},

		// The ready set in due order. The terms on state and pending_deps
		// select the partial index batuta_tasks_ready.
		{&st.claimReady, `SELECT t.run_id, t.idx, t.name, t.deps, t.attempts_spent, t.rescues,
       r.workflow, r.event, r.deadline
    FROM batuta_tasks t JOIN batuta_runs r ON r.id = t.run_id
    WHERE t.state = 'pending' AND t.pending_deps = 0 AND t.due_at <= ?1
      AND (?2 IS NULL OR t.workflow IN (SELECT value FROM json_each(?2)))
    ORDER BY t.due_at
    LIMIT ?3`},
		{&st.claimTask, `UPDATE batuta_tasks SET state = 'running', token = ?, owner = ?, lease_until = ?
    WHERE run_id = ? AND idx = ?`},
		{&st.startRun, `UPDATE batuta_runs SET state = 'running', started_at = ?
    WHERE id = ? AND state = 'pending'`},
		{&st.nextTokens, `UPDATE batuta_counters SET value = value + ? WHERE name = 'lease_token' RETURNING value`},
		{&st.upstream, `SELECT idx, name, state, output, error FROM batuta_tasks
    WHERE run_id = ? AND idx IN (SELECT value FROM json_each(?))`},
		{&st.extendLease, `UPDATE batuta_tasks SET lease_until = ?
    WHERE run_id = ? AND name = ? AND token = ? AND state = 'running'`},
		{&st.runCanceled, `SELECT canceled FROM batuta_runs WHERE id = ?`},

		{&st.claimedTask, `SELECT t.idx, t.state, t.token, t.dependents, t.attempts_spent, r.canceled
    FROM batuta_tasks t JOIN batuta_runs r ON r.id = t.run_id
    WHERE t.run_id = ? AND t.name = ?`},
		// ?1 state, ?2 output, ?3 error, ?4 attempts spent, ?5 due_at
		// (NULL: unchanged), ?6 attempt record as JSON (NULL: none).
		{&st.finishTask, `UPDATE batuta_tasks SET
    state = ?1, output = ?2, error = ?3, attempts_spent = ?4,
    due_at = coalesce(?5, due_at),
    attempts = CASE WHEN ?6 IS NULL THEN attempts ELSE json_insert(attempts, '$[#]', json(?6)) END,
    token = NULL, owner = NULL, lease_until = NULL
    WHERE run_id = ?7 AND idx = ?8`},
		// ?3 is the finished dependency's class (fireClass). A task at 0
		// is ready already (or was made ready early): it is left alone,
		// so it is made ready once.
		{&st.countDown, `UPDATE batuta_tasks SET pending_deps =
        CASE WHEN fire_on <> '' AND fire_on = ?3 THEN 0 ELSE pending_deps - 1 END
    WHERE run_id = ?1 AND idx IN (SELECT value FROM json_each(?2)) AND pending_deps > 0
    RETURNING pending_deps = 0 AND state = 'pending'`},
		// ?1 tasks finished, ?2 of them failed, ?3 error of the first
		// failure, ?4 run ID.
		{&st.taskDone, `UPDATE batuta_runs SET
    unfinished_tasks = unfinished_tasks - ?1,
    failed_tasks = failed_tasks + ?2,
    error = CASE WHEN error = '' THEN ?3 ELSE error END
    WHERE id = ?4
    RETURNING unfinished_tasks, failed_tasks, canceled`},
		{&st.finishRun, `UPDATE batuta_runs SET state = ?, finished_at = ? WHERE id = ?`},

		{&st.expired, `SELECT t.run_id, t.idx, t.name, t.rescues, t.dependents, r.canceled
    FROM batuta_tasks t JOIN batuta_runs r ON r.id = t.run_id
    WHERE t.state = 'running' AND t.lease_until < ?
    ORDER BY t.lease_until
    LIMIT ?`},
		{&st.rescueTask, `UPDATE batuta_tasks SET state = 'pending', rescues = rescues + 1,
    token = NULL, owner = NULL, lease_until = NULL
    WHERE run_id = ? AND idx = ?`},
		{&st.cancelRun, `UPDATE batuta_runs SET canceled = 1, error = ? WHERE id = ?`},
		{&st.cancelTasks, `UPDATE batuta_tasks SET state = 'canceled', error = ?
    WHERE run_id = ? AND state = 'pending'`},
		{&st.runState, `SELECT state, canceled FROM batuta_runs WHERE id = ?`},
		{&st.recordTick, `INSERT INTO batuta_ticks (schedule, tick) VALUES (?, ?)
    ON CONFLICT (schedule) DO UPDATE SET tick = excluded.tick WHERE excluded.tick > batuta_ticks.tick`},
	}
	for _, p := range list {
		stmt, err := c.PrepareContext(ctx, p.sql)
		if err != nil {
			st.close()
			return nil, fmt.Errorf("batutasqlite: prepare %q: %w", firstLine(p.sql), err)
		}
		*p.dst = stmt
	}
	return st, nil
}

func (st *statements) close() {
	for _, s := range []*sql.Stmt{
		st.begin, st.commit, st.savepoint, st.release, st.rollbackTo, st.insertRun, st.insertTask, st.runByKey, st.activeRuns, st.addActiveRuns,
		st.claimReady, st.claimTask, st.startRun, st.nextTokens, st.upstream, st.extendLease, st.runCanceled,
		st.claimedTask, st.finishTask, st.countDown, st.taskDone, st.finishRun,
		st.expired, st.rescueTask, st.cancelRun, st.cancelTasks, st.runState, st.recordTick,
	} {
		if s != nil {
			_ = s.Close()
		}
	}
}

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	return s
}
