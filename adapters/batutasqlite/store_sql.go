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

	// Flow control (store_flow.go).
	flowProbe   *sql.Stmt
	promote     *sql.Stmt
	admitGroups *sql.Stmt
	groupHead   *sql.Stmt
	admitRun    *sql.Stmt
	ungate      *sql.Stmt
	groupAdmit  *sql.Stmt
	taskSlot    *sql.Stmt
	taskUnslot  *sql.Stmt
	taskGroupGC *sql.Stmt
	park        *sql.Stmt
	unpark      *sql.Stmt
	groupJoin   *sql.Stmt
	groupLeave  *sql.Stmt
	groupGC     *sql.Stmt

	// Durable waits (store_ops.go).
	waitTask     *sql.Stmt
	oldestSignal *sql.Stmt
	wakeParent   *sql.Stmt
}

// Column lists shared by the statements and the scanners.
const (
	runColumns  = `id, workflow, event, state, created_at, started_at, finished_at, deadline, error, start_at, priority, concurrency_key, parent_run, parent_task, retries`
	taskColumns = `run_id, idx, name, state, deps, output, error, attempts, rescues, due_at, waiting_since, waiting_for, child`
)

// Statements whose plans TestFlowClaimIndexHoldsNoWaitingWork checks.
const (
	claimReadySQL = `SELECT t.run_id, t.idx, t.name, t.deps, t.attempts_spent, t.rescues,
       t.rate_reserved, t.concurrency_key, t.concurrency_max, t.signal, t.waiting_since,
       r.workflow, r.event, r.deadline
    FROM batuta_tasks t JOIN batuta_runs r ON r.id = t.run_id
    WHERE t.state = 'pending' AND t.pending_deps = 0 AND t.delayed = 0 AND t.paused = 0 AND t.gated = 0
      AND t.due_at <= ?1
      AND (?2 IS NULL OR t.workflow IN (SELECT value FROM json_each(?2)))
    ORDER BY t.priority DESC, t.due_at
    LIMIT ?3`
	// A due task of a paused workflow keeps its delayed hold and gets the
	// paused one (which takes it out of the delayed index until resumed).
	promoteSQL = `UPDATE batuta_tasks SET
        paused = workflow IN (SELECT workflow FROM batuta_paused),
        delayed = workflow IN (SELECT workflow FROM batuta_paused)
    WHERE rowid IN (
        SELECT rowid FROM batuta_tasks
        WHERE state = 'pending' AND delayed = 1 AND paused = 0 AND due_at <= ?1
        ORDER BY due_at LIMIT ?2)
    RETURNING run_id, gated, paused`
	admitGroupsSQL = `SELECT key FROM batuta_groups
    WHERE eligible > 0 AND admitted < max
    ORDER BY last_admitted LIMIT ?`
	groupHeadSQL = `SELECT id FROM batuta_runs
    WHERE concurrency_key = ? AND adm = 2
    ORDER BY priority DESC, created_at LIMIT 1`
	// flowProbeSQL tells whether a claim has tasks to promote, runs to
	// admit or paused workflows to look out for, so that a claim with none
	// of them pays one statement of three index lookups.
	flowProbeSQL = `SELECT
    EXISTS (SELECT 1 FROM batuta_tasks WHERE state = 'pending' AND delayed = 1 AND paused = 0 AND due_at <= ?1),
    EXISTS (SELECT 1 FROM batuta_groups WHERE eligible > 0 AND admitted < max),
    EXISTS (SELECT 1 FROM batuta_paused)`
	unparkSQL = `UPDATE batuta_tasks SET gated = 0 WHERE rowid = (
        SELECT rowid FROM batuta_tasks WHERE concurrency_key = ? AND gated = 2
        ORDER BY priority DESC, due_at LIMIT 1)
    RETURNING run_id`
	// nextDueSQL: one seek per workflow of ?2 (a JSON array) that is not
	// paused, in batuta_tasks_delayed_wf.
	nextDueSQL = `SELECT min((SELECT t.due_at FROM batuta_tasks t
        WHERE t.workflow = j.value AND t.state = 'pending' AND t.delayed = 1 AND t.paused = 0 AND t.due_at > ?1
          AND t.due_at < 9223372036854775807
        ORDER BY t.due_at LIMIT 1))
    FROM json_each(?2) j WHERE j.value NOT IN (SELECT workflow FROM batuta_paused)`
	// nextDueAllSQL: NextDue over every workflow, in batuta_tasks_delayed.
	nextDueAllSQL = `SELECT due_at FROM batuta_tasks
    WHERE state = 'pending' AND delayed = 1 AND paused = 0 AND due_at > ?1 AND due_at < 9223372036854775807
      AND workflow NOT IN (SELECT workflow FROM batuta_paused)
    ORDER BY due_at LIMIT 1`
)

// Statements of the durable waits (store_ops.go).
const (
	waitTaskSQL = `UPDATE batuta_tasks SET
    state = 'pending', due_at = ?1, delayed = 1, rate_reserved = 0,
    waiting_since = coalesce(waiting_since, ?2), waiting_for = ?3, child = coalesce(?4, child), error = ?7,
    token = NULL, owner = NULL, lease_until = NULL
    WHERE run_id = ?5 AND idx = ?6`
	// The parent's task of a child run that finished, if pending and no
	// other child of it is unfinished, becomes due at ?3 (the finish time)
	// unless it was due before.
	wakeParentSQL = `UPDATE batuta_tasks SET due_at = min(due_at, ?3), delayed = 1
    WHERE run_id = ?1 AND name = ?2 AND state = 'pending'
      AND NOT EXISTS (SELECT 1 FROM batuta_runs
          WHERE parent_run = ?1 AND parent_task = ?2 AND finished_at IS NULL)`
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

		// A run recorded canceled at once (ConcurrencyCancelNewest) has
		// state 'canceled', canceled 1, finished_at set and no unfinished
		// task; any other starts pending.
		{&st.insertRun, `INSERT INTO batuta_runs
    (id, workflow, event_id, event, state, created_at, deadline, unfinished_tasks,
     start_at, priority, concurrency_key, concurrency_max, concurrency_strategy, adm, debounce_key,
     canceled, error, finished_at, parent_run, parent_task, subject)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (workflow, event_id) DO NOTHING`},
		{&st.insertTask, `INSERT INTO batuta_tasks
    (run_id, idx, name, workflow, deps, dependents, state, pending_deps, due_at, fire_on,
     priority, delayed, gated, concurrency_key, concurrency_max, error, signal)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		{&st.runByKey, `SELECT id FROM batuta_runs WHERE workflow = ? AND event_id = ?`},
		{&st.activeRuns, `SELECT value FROM batuta_counters WHERE name = 'active_runs'`},
		{&st.addActiveRuns, `UPDATE batuta_counters SET value = value + ? WHERE name = 'active_runs'`},

		// The claimable set, higher priority first, then in due order.
		// The terms on state, pending_deps and the holds select the
		// partial index batuta_tasks_claim.
		{&st.claimReady, claimReadySQL},
		{&st.claimTask, `UPDATE batuta_tasks SET state = 'running', token = ?, owner = ?, lease_until = ?, rate_reserved = 0
    WHERE run_id = ? AND idx = ?`},
		// A run reopened by RetryRun keeps its first start.
		{&st.startRun, `UPDATE batuta_runs SET state = 'running', started_at = coalesce(started_at, ?)
    WHERE id = ? AND state = 'pending'`},
		{&st.nextTokens, `UPDATE batuta_counters SET value = value + ? WHERE name = 'lease_token' RETURNING value`},
		{&st.upstream, `SELECT idx, name, state, output, error FROM batuta_tasks
    WHERE run_id = ? AND idx IN (SELECT value FROM json_each(?))`},
		{&st.extendLease, `UPDATE batuta_tasks SET lease_until = ?
    WHERE run_id = ? AND name = ? AND token = ? AND state = 'running'`},
		{&st.runCanceled, `SELECT canceled FROM batuta_runs WHERE id = ?`},

		{&st.claimedTask, `SELECT t.idx, t.state, t.token, t.dependents, t.attempts_spent, t.concurrency_key, t.signal, r.canceled
    FROM batuta_tasks t JOIN batuta_runs r ON r.id = t.run_id
    WHERE t.run_id = ? AND t.name = ?`},
		// ?1 state, ?2 output, ?3 error, ?4 attempts spent, ?5 due_at
		// (NULL: unchanged; else the task waits for it), ?6 attempt
		// record as JSON (NULL: none), ?9 rate_reserved.
		{&st.finishTask, `UPDATE batuta_tasks SET
    state = ?1, output = ?2, error = ?3, attempts_spent = ?4,
    due_at = coalesce(?5, due_at), delayed = ?5 IS NOT NULL, rate_reserved = ?9,
    attempts = CASE
        WHEN ?6 IS NULL THEN attempts
        -- a snooze after a snooze of the same number replaces it, counting
        -- both (Attempt.Snoozes: a polling task's history stays bounded)
        WHEN json_extract(?6, '$.outcome') = 'snooze' AND json_extract(attempts, '$[#-1].outcome') = 'snooze'
            AND json_extract(attempts, '$[#-1].number') = json_extract(?6, '$.number')
            THEN json_set(attempts, '$[#-1]', json_set(json(?6), '$.snoozes', coalesce(json_extract(attempts, '$[#-1].snoozes'), 1) + 1))
        ELSE json_insert(attempts, '$[#]', json(?6))
    END,
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
    RETURNING unfinished_tasks, failed_tasks, canceled, concurrency_key, adm, parent_run, parent_task`},
		{&st.finishRun, `UPDATE batuta_runs SET state = ?, finished_at = ? WHERE id = ?`},

		{&st.expired, `SELECT t.run_id, t.idx, t.name, t.rescues, t.dependents, t.concurrency_key, r.canceled
    FROM batuta_tasks t JOIN batuta_runs r ON r.id = t.run_id
    WHERE t.state = 'running' AND t.lease_until < ?
    ORDER BY t.lease_until
    LIMIT ?`},
		{&st.rescueTask, `UPDATE batuta_tasks SET state = 'pending', rescues = rescues + 1,
    token = NULL, owner = NULL, lease_until = NULL
    WHERE run_id = ? AND idx = ?`},
		{&st.cancelRun, `UPDATE batuta_runs SET canceled = 1, error = ? WHERE id = ?`},
		{&st.cancelTasks, `UPDATE batuta_tasks SET state = 'canceled', error = ?, gated = 0
    WHERE run_id = ? AND state = 'pending'`},
		{&st.runState, `SELECT state, canceled, concurrency_key, adm, concurrency_strategy FROM batuta_runs WHERE id = ?`},
		{&st.recordTick, `INSERT INTO batuta_ticks (schedule, tick) VALUES (?, ?)
    ON CONFLICT (schedule) DO UPDATE SET tick = excluded.tick WHERE excluded.tick > batuta_ticks.tick`},

		{&st.flowProbe, flowProbeSQL},
		// Tasks whose time came: they join the claim index (or, for a
		// run waiting for admission, make it eligible).
		{&st.promote, promoteSQL},
		{&st.admitGroups, admitGroupsSQL},
		{&st.groupHead, groupHeadSQL},
		{&st.admitRun, `UPDATE batuta_runs SET adm = 1 WHERE id = ?`},
		{&st.ungate, `UPDATE batuta_tasks SET gated = 0 WHERE run_id = ?`},
		{&st.groupAdmit, `UPDATE batuta_groups SET admitted = admitted + 1, eligible = eligible - 1, last_admitted = ?
    WHERE key = ?`},
		// Takes a slot of a task-level group if it has one free; no row
		// returned: the group is full.
		{&st.taskSlot, `INSERT INTO batuta_task_groups (key, running) VALUES (?1, 1)
    ON CONFLICT (key) DO UPDATE SET running = running + 1 WHERE running < ?2
    RETURNING running`},
		{&st.taskUnslot, `UPDATE batuta_task_groups SET running = running - 1 WHERE key = ? RETURNING parked`},
		{&st.taskGroupGC, `DELETE FROM batuta_task_groups WHERE key = ? AND running <= 0 AND parked <= 0`},
		{&st.park, `UPDATE batuta_tasks SET gated = 2 WHERE run_id = ? AND idx = ?`},
		// Unparks the first parked task of a group; no row: none parked.
		{&st.unpark, unparkSQL},
		// ?1 key, ?2 max, ?3 admitted (0/1), ?4 eligible (0/1).
		{&st.groupJoin, `INSERT INTO batuta_groups (key, max, admitted, eligible, members) VALUES (?1, ?2, ?3, ?4, 1)
    ON CONFLICT (key) DO UPDATE SET max = excluded.max, admitted = admitted + excluded.admitted,
        eligible = eligible + excluded.eligible, members = members + 1`},
		// ?1 key, ?2 admitted (0/1), ?3 eligible (0/1).
		{&st.groupLeave, `UPDATE batuta_groups SET admitted = admitted - ?2, eligible = eligible - ?3, members = members - 1
    WHERE key = ?1`},
		{&st.groupGC, `DELETE FROM batuta_groups WHERE key = ? AND members <= 0`},

		// OutcomeWait: ?1 due_at (neverDue: no time limit), ?2 the
		// completion's FinishedAt (WaitingSince the first time), ?3
		// WaitFor, ?4 Child (NULL: unchanged), ?7 the completion's Error (as
		// the other outcomes that leave the task pending).
		{&st.waitTask, waitTaskSQL},
		{&st.oldestSignal, `SELECT seq, data, sent_at FROM batuta_signals
    WHERE run_id = ? AND name = ? ORDER BY seq LIMIT 1`},
		{&st.wakeParent, wakeParentSQL},
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
		st.flowProbe, st.promote, st.admitGroups, st.groupHead, st.admitRun, st.ungate, st.groupAdmit,
		st.taskSlot, st.taskUnslot, st.taskGroupGC, st.park, st.unpark, st.groupJoin, st.groupLeave, st.groupGC,
		st.waitTask, st.oldestSignal, st.wakeParent,
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
