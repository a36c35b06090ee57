package batutapg

import "strings"

// queries holds the store's statements with the quoted schema filled in.
// They are built once per Store and run as cached prepared statements.
type queries struct {
	createRuns, findExisting, countActive  string
	createPlain, createClaim               string
	claim, claimPlain, extend, promote     string
	probe                                  string
	lockRuns, complete, expired, taskForTx string
	completePlain                          string
	completeStep, completeStepFull         string
	completeLink                           string
	cancelLock, cancel                     string
	runSelect, getRun, findRun             string
	pruneBefore, pruneCutoff, pruneUpTo    string
	lastTick, recordTicks, notify          string
}

func buildQueries(schema string) queries {
	r := strings.NewReplacer("{s}", schema)
	q := queries{
		// Runs and their tasks, many at once. A duplicate (workflow,
		// event_id) or run ID is skipped by the unique constraints, which
		// is what makes dedupe safe under concurrency; rows are inserted in
		// key order so that two batches waiting on each other's
		// uncommitted keys cannot deadlock.
		createRuns: `
WITH r AS (
    INSERT INTO {s}.runs (id, workflow, event_id, event, created_at, deadline, tasks_total, tasks_left,
        start_at, priority, ckey, admit, dkey, state, canceled, error, finished_at, parent_id, parent_task)
    SELECT u.id, u.wf, u.eid, u.ev, u.ca, u.dl, u.n, CASE WHEN u.rej IS NULL THEN u.n ELSE 0 END,
        u.sa, u.prio, u.ckey, u.admit, u.dkey, CASE WHEN u.rej IS NULL THEN 'active' ELSE 'canceled' END,
        u.rej IS NOT NULL, coalesce(u.rej, ''), CASE WHEN u.rej IS NOT NULL THEN u.ca END, u.pid, u.ptask
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::json[], $5::timestamptz[], $6::timestamptz[], $7::int[],
                $18::timestamptz[], $19::int[], $20::text[], $21::smallint[], $22::text[], $23::text[], $34::uuid[], $35::text[])
        AS u(id, wf, eid, ev, ca, dl, n, sa, prio, ckey, admit, dkey, rej, pid, ptask)
    ORDER BY u.wf, u.eid
    ON CONFLICT DO NOTHING
    RETURNING id, ckey, admit, priority, created_at, start_at, parent_id, parent_task, state, workflow, finished_at
), rs AS (
    -- the runs' state rows (run_states: listing by state, statistics)
    INSERT INTO {s}.run_states (run_id, workflow, state, created_at, finished_at)
    SELECT id, workflow, state, created_at, finished_at FROM r
), pk AS (
    -- child runs: their parent task counts them (kids), and those not
    -- finished (kids_open); the last one to finish wakes it
    UPDATE {s}.tasks t SET kids = t.kids + c.n, kids_open = t.kids_open + c.o
    FROM (SELECT parent_id, parent_task, count(*) AS n, count(*) FILTER (WHERE state = 'active') AS o
          FROM r WHERE parent_id IS NOT NULL GROUP BY parent_id, parent_task) c
    WHERE t.run_id = c.parent_id AND t.name = c.parent_task
), q AS (
    INSERT INTO {s}.run_queue (ckey, priority, created_at, run_id, start_at)
    SELECT ckey, priority, created_at, id, start_at FROM r WHERE admit = 1
), t AS (
    INSERT INTO {s}.tasks (run_id, idx, name, workflow, deps, dependents, pending_deps, solo, state, due_at, fire_on,
        priority, hold, tkey, error, rgroup, signal, sub)
    SELECT v.run_id, v.idx, v.name, v.wf, v.deps::smallint[], v.dependents::smallint[], v.ndeps, v.solo,
        CASE WHEN v.rej IS NULL THEN 'pending' ELSE 'canceled' END, v.due, v.fire_on, v.prio,
        CASE WHEN v.hold = 0 AND v.ndeps = 0 AND v.rej IS NULL
            AND v.wf = ANY((SELECT coalesce(array_agg(p.workflow), '{}') FROM {s}.paused p)::text[]) THEN 3 ELSE v.hold END,
        v.tkey, v.rej, v.rgroup, v.sig, v.sub
    FROM unnest($8::uuid[], $9::smallint[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int[], $15::bool[], $16::timestamptz[], $17::text[],
                $24::int[], $25::smallint[], $26::text[], $27::text[], $33::bool[], $36::text[], $37::bool[])
        AS v(run_id, idx, name, wf, deps, dependents, ndeps, solo, due, fire_on, prio, hold, tkey, rej, rgroup, sig, sub)
    WHERE v.run_id IN (SELECT id FROM r)
), g AS (
    -- the workflow-level groups of the runs created: queued (admit 1) and
    -- admitted (admit 2, CancelInProgress and CancelNewest) runs counted
    INSERT INTO {s}.run_groups AS g (key, workflow, max, waiting, active)
    SELECT c.key, c.wf, c.max, x.w, x.a
    FROM unnest($28::text[], $29::text[], $30::int[]) AS c(key, wf, max)
    JOIN (SELECT ckey, count(*) FILTER (WHERE admit = 1) AS w, count(*) FILTER (WHERE admit = 2) AS a
          FROM r WHERE ckey IS NOT NULL GROUP BY ckey) x ON x.ckey = c.key
    ORDER BY c.key
    ON CONFLICT (key) DO UPDATE SET waiting = g.waiting + EXCLUDED.waiting, active = g.active + EXCLUDED.active, max = EXCLUDED.max
), tg AS (
    -- task-level groups, written only when new or their Max changed (so
    -- creating runs does not lock rows the claims use)
    INSERT INTO {s}.task_groups AS g (key, max)
    SELECT c.key, c.max FROM unnest($31::text[], $32::int[]) AS c(key, max)
    WHERE NOT EXISTS (SELECT 1 FROM {s}.task_groups x WHERE x.key = c.key AND x.max = c.max)
    ORDER BY c.key
    ON CONFLICT (key) DO UPDATE SET max = EXCLUDED.max
)
SELECT r.id FROM r`,

		findExisting: `
SELECT u.ord, r.id
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(wf, eid, ord)
JOIN {s}.runs r ON r.workflow = u.wf AND r.event_id = u.eid`,

		// Unfinished runs, counted without an index on runs' state (which
		// would make every finishing update a non-HOT one): an unfinished
		// run always has a task that is running, or pending with every
		// dependency finished (the first unfinished task in DAG order), and
		// those are exactly the two partial indexes of tasks.
		countActive: `
SELECT count(DISTINCT run_id) FROM (
    SELECT run_id FROM {s}.tasks WHERE state = 'pending' AND pending_deps = 0 AND hold = 0
    UNION ALL
    SELECT run_id FROM {s}.tasks WHERE state = 'pending' AND pending_deps = 0 AND hold IN (1, 4)
    UNION ALL
    SELECT run_id FROM {s}.tasks WHERE state = 'pending' AND hold = 3
    UNION ALL
    SELECT run_id FROM {s}.tasks WHERE state = 'pending' AND pending_deps = 0 AND hold = 5
    UNION ALL
    SELECT run_id FROM {s}.tasks WHERE state = 'pending' AND hold = 6
    UNION ALL
    SELECT run_id FROM {s}.run_queue
    UNION ALL
    SELECT run_id FROM {s}.tasks WHERE state = 'running'
) a`,

		// The claim: pick ready tasks through a CTE with LIMIT and SKIP
		// LOCKED (an IN (subquery) could claim more than the limit), lease
		// them, and return each with its run's event and its direct
		// dependencies' results.
		//
		// Paused workflows are filtered after the scan (their ready tasks
		// are mostly moved out of the ready set, but one made ready while
		// the pause committed may remain; in the scan's WHERE the filter
		// spoils the generic plan's estimate). A task of a task-level
		// concurrency group is claimed only while the group, locked here
		// (SKIP LOCKED: a group another transaction holds waits for the
		// next claim), has room, and the claim takes the slot in the same
		// statement; the tasks of a full group it met are parked (out of
		// the ready set) until a claim finds the group with room.
		claim: `
WITH g AS MATERIALIZED (
    -- admission: groups with queued runs and room take turns, the one
    -- served least recently first (a group whose turn came goes to the
    -- back even if it admitted nothing, so groups with only delayed runs
    -- queued cannot hold the others up); each admits its first runs
    -- (priority, then creation) up to its room, and active grows in this
    -- statement, under the group row's lock
    SELECT key, max - active AS room FROM {s}.run_groups
    WHERE waiting > 0 AND active < max
      AND ($2::text[] IS NULL OR workflow = ANY($2::text[]))
      AND NOT (workflow = ANY((SELECT coalesce(array_agg(p.workflow), '{}') FROM {s}.paused p)::text[]))
    ORDER BY last_admit
    LIMIT $3
    FOR NO KEY UPDATE SKIP LOCKED
), a AS MATERIALIZED (
    -- (The queue is read in its index's order and the run row checked
    -- and locked per queue row, so each group reads its first entries
    -- only: joined to runs, the planner read and sorted a group's whole
    -- queue, 85 buffers per admitted run.)
    SELECT x.id, g.key FROM g CROSS JOIN LATERAL (
        SELECT q.run_id AS id FROM {s}.run_queue q
        WHERE q.ckey = g.key AND (q.start_at IS NULL OR q.start_at <= $1)
          AND EXISTS (SELECT 1 FROM {s}.runs r WHERE r.id = q.run_id AND r.admit = 1 FOR NO KEY UPDATE SKIP LOCKED)
        ORDER BY q.priority DESC, q.created_at, q.run_id
        LIMIT g.room
        FOR UPDATE OF q SKIP LOCKED
    ) x
    LIMIT $3
), dq AS (
    DELETE FROM {s}.run_queue q USING a WHERE q.run_id = a.id
), ru AS (
    UPDATE {s}.runs r SET admit = 2 FROM a WHERE r.id = a.id AND r.admit = 1
    RETURNING r.id, a.key
), gu AS (
    UPDATE {s}.run_groups x SET active = x.active + coalesce(c.n, 0), waiting = x.waiting - coalesce(c.n, 0),
        last_admit = clock_timestamp()
    FROM g LEFT JOIN (SELECT key, count(*) AS n FROM ru GROUP BY key) c ON c.key = g.key
    WHERE x.key = g.key
), at AS MATERIALIZED (
    -- the first tasks of the runs admitted now: claimed here with the
    -- ready ones, or put in the ready set
    SELECT t.run_id, t.idx, t.tkey, t.rate_reserved, t.priority, t.due_at, t.workflow
    FROM ru JOIN {s}.tasks t ON t.run_id = ru.id
    WHERE t.state = 'pending' AND t.pending_deps = 0 AND t.hold IN (2, 4)
), picked AS MATERIALIZED (
    SELECT run_id, idx, tkey, rate_reserved, priority, due_at, workflow FROM {s}.tasks
    WHERE state = 'pending' AND pending_deps = 0 AND hold = 0 AND due_at <= $1
      AND ($2::text[] IS NULL OR workflow = ANY($2::text[]))
    ORDER BY priority DESC, due_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), cand AS MATERIALIZED (
    SELECT * FROM picked UNION ALL SELECT * FROM at
), pz AS (
    SELECT coalesce(array_agg(p.workflow), '{}') AS wfs FROM {s}.paused p
), tg AS MATERIALIZED (
    SELECT key, max - active AS room FROM {s}.task_groups
    WHERE key IN (SELECT tkey FROM cand WHERE tkey IS NOT NULL)
    FOR NO KEY UPDATE SKIP LOCKED
), rk AS MATERIALIZED (
    SELECT c.run_id, c.idx, c.tkey, c.rate_reserved, c.priority, c.due_at, tg.room,
        row_number() OVER (PARTITION BY c.tkey ORDER BY c.priority DESC, c.due_at) AS rn
    FROM cand c JOIN tg ON tg.key = c.tkey
    WHERE NOT (c.workflow = ANY((SELECT wfs FROM pz)::text[]))
), ok AS MATERIALIZED (
    SELECT * FROM (
        SELECT run_id, idx, tkey, rate_reserved, priority, due_at FROM cand
        WHERE tkey IS NULL AND NOT (workflow = ANY((SELECT wfs FROM pz)::text[]))
        UNION ALL
        SELECT run_id, idx, tkey, rate_reserved, priority, due_at FROM rk WHERE rn <= room
    ) e
    ORDER BY priority DESC, due_at
    LIMIT $3
), pk AS (
    UPDATE {s}.tasks t SET hold = 5 FROM rk
    WHERE rk.rn > rk.room AND t.run_id = rk.run_id AND t.idx = rk.idx
), rest AS (
    -- admitted now, not claimed now: to the ready set
    UPDATE {s}.tasks t SET hold = CASE WHEN t.workflow = ANY((SELECT wfs FROM pz)::text[]) THEN 3 ELSE 0 END
    FROM at
    WHERE t.run_id = at.run_id AND t.idx = at.idx
      AND NOT EXISTS (SELECT 1 FROM ok WHERE ok.run_id = at.run_id AND ok.idx = at.idx)
      AND NOT EXISTS (SELECT 1 FROM rk WHERE rk.run_id = at.run_id AND rk.idx = at.idx AND rk.rn > rk.room)
), tgu AS (
    UPDATE {s}.task_groups x SET active = x.active + coalesce(c.n, 0), parked = x.parked + coalesce(k.n, 0)
    FROM tg
    LEFT JOIN (SELECT tkey, count(*) AS n FROM ok WHERE tkey IS NOT NULL GROUP BY tkey) c ON c.tkey = tg.key
    LEFT JOIN (SELECT tkey, count(*) AS n FROM rk WHERE rn > room GROUP BY tkey) k ON k.tkey = tg.key
    WHERE x.key = tg.key AND (c.n IS NOT NULL OR k.n IS NOT NULL)
), claimed AS (
    UPDATE {s}.tasks t
` + claimSet + `    FROM ok p
    WHERE t.run_id = p.run_id AND t.idx = p.idx AND t.state = 'pending'
` + claimReturning,

		// The claim when no concurrency group can admit and no ready task
		// has a task-level group (the store learns it from the promote
		// statement of each claim): the ready set's first tasks, without
		// the concurrency steps (tasks of a task-level group are left to
		// the full claim).
		claimPlain: `
WITH ok AS MATERIALIZED (
    SELECT run_id, idx, rate_reserved, priority, due_at, workflow FROM {s}.tasks
    WHERE state = 'pending' AND pending_deps = 0 AND hold = 0 AND due_at <= $1 AND tkey IS NULL
      AND ($2::text[] IS NULL OR workflow = ANY($2::text[]))
    ORDER BY priority DESC, due_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE {s}.tasks t
` + claimSet + `    FROM ok p
    WHERE t.run_id = p.run_id AND t.idx = p.idx
      AND NOT (p.workflow = ANY((SELECT coalesce(array_agg(z.workflow), '{}') FROM {s}.paused z)::text[]))
` + claimReturning,

		// Before each claim, in its transaction: delayed tasks that came due
		// move to the ready set (or, for a run queued for admission, to
		// its group's queue). A claim never waits for them: SKIP LOCKED.
		//
		// The same statement unparks tasks of task-level groups with room
		// (their first parked tasks, up to the room, back to the ready set).
		promote: `
WITH tk AS MATERIALIZED (
    -- task groups with parked tasks and room: their first parked tasks
    -- go back to the ready set (the claim that follows takes the slots)
    SELECT key, max - active AS room FROM {s}.task_groups
    WHERE parked > 0 AND active < max
    ORDER BY key LIMIT $3
    FOR NO KEY UPDATE SKIP LOCKED
), up AS (
    UPDATE {s}.tasks t SET hold = 0
    FROM (
        SELECT x.run_id, x.idx, tk.key FROM tk CROSS JOIN LATERAL (
            SELECT run_id, idx FROM {s}.tasks
            WHERE tkey = tk.key AND state = 'pending' AND pending_deps = 0 AND hold = 5
            ORDER BY priority DESC, due_at
            LIMIT tk.room
            FOR UPDATE SKIP LOCKED
        ) x
    ) w
    WHERE t.run_id = w.run_id AND t.idx = w.idx AND t.hold = 5
    RETURNING w.key
), upg AS (
    UPDATE {s}.task_groups g SET parked = g.parked - c.n
    FROM (SELECT key, count(*) AS n FROM up GROUP BY key) c
    WHERE g.key = c.key
), d AS (
    SELECT run_id, idx FROM {s}.tasks
    WHERE state = 'pending' AND pending_deps = 0 AND hold IN (1, 4) AND due_at <= $1
      AND ($2::text[] IS NULL OR workflow = ANY($2::text[]))
    ORDER BY due_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), pr AS (
    UPDATE {s}.tasks t SET hold = CASE
            WHEN t.hold = 4 THEN 2
            WHEN t.workflow = ANY((SELECT coalesce(array_agg(p.workflow), '{}') FROM {s}.paused p)::text[]) THEN 3
            ELSE 0 END
    FROM d WHERE t.run_id = d.run_id AND t.idx = d.idx AND t.hold IN (1, 4)
    RETURNING t.hold
)
SELECT EXISTS (SELECT 1 FROM up) OR EXISTS (SELECT 1 FROM pr WHERE hold = 2),
    (SELECT count(*) FROM pr WHERE hold = 0)`,

		// Read before each claim (and after the promote statement, if
		// any), in its transaction: when the next delayed task is due,
		// whether a task-level group has parked tasks and room, and
		// whether the claim needs its concurrency steps (a group can
		// admit, or a ready task belongs to a task-level group). The
		// store runs the promote statement and the full claim only when
		// the previous probe (or this one, for a second try) says so.
		// The next due time is read as the first entry of tasks_delayed
		// (ORDER BY ... LIMIT 1), not min(due_at): with statistics taken
		// while the table was small, the planner aggregated over an index
		// scan of every delayed task (53-86 ms with 85,000 of them, and
		// 5 ms on average in flowbench's delayed scenario) instead of
		// reading one entry.
		probe: `
SELECT (SELECT due_at FROM {s}.tasks WHERE state = 'pending' AND pending_deps = 0 AND hold IN (1, 4) ORDER BY due_at LIMIT 1),
    EXISTS (SELECT 1 FROM {s}.task_groups WHERE parked > 0 AND active < max),
    EXISTS (SELECT 1 FROM {s}.run_groups WHERE waiting > 0 AND active < max)
    OR EXISTS (SELECT 1 FROM {s}.tasks WHERE state = 'pending' AND pending_deps = 0 AND hold = 0 AND tkey IS NOT NULL)`,

		// Lease extension never waits: a task row locked by someone else is
		// being completed, rescued or canceled right now; it is reported
		// from the snapshot and the next heartbeat tells the truth.
		extend: `
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[]) WITH ORDINALITY AS i(run_id, task, token, ord)
), l AS (
    SELECT t.run_id, t.idx, i.ord FROM i
    JOIN {s}.tasks t ON t.run_id = i.run_id AND t.idx = (i.token & 32767)::smallint
    WHERE t.token = i.token AND t.name = i.task AND t.lease_until IS NOT NULL
    FOR UPDATE OF t SKIP LOCKED
), u AS (
    UPDATE {s}.tasks t SET lease_until = $4 FROM l
    WHERE t.run_id = l.run_id AND t.idx = l.idx
    RETURNING l.ord
)
SELECT i.ord, EXISTS (SELECT 1 FROM u WHERE u.ord = i.ord), coalesce(r.canceled, false),
    EXISTS (SELECT 1 FROM {s}.tasks t WHERE t.run_id = i.run_id AND t.idx = (i.token & 32767)::smallint
        AND t.token = i.token AND t.name = i.task AND t.lease_until IS NOT NULL)
FROM i LEFT JOIN {s}.runs r ON r.id = i.run_id`,

		// Every change to a run's DAG bookkeeping locks the run row first,
		// in id order: that serialises the completions of one run and
		// keeps lock order global (runs, then their tasks), so batches
		// never deadlock.
		//
		// Runs of a single task are not locked: one task has no siblings
		// to race with, its task row serialises writers, and its run row is
		// only updated after it. (The cost: a retry reported while a
		// CancelRun of the same run commits may read the run as not yet
		// canceled and go back to the ready set; it then runs once more and
		// the run still ends canceled.)
		lockRuns: `SELECT id FROM {s}.runs WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE`,

		// A note on "lease_until IS NOT NULL": it holds exactly while a
		// task is running (claims set it, every other transition clears
		// it). The statements below test it rather than state = 'running'
		// when they look a task up by primary key, because that condition
		// would let the planner scan the tasks_leased partial index (every
		// running task, times the batch) whenever statistics caught the
		// table with few running tasks.
		//
		// Completions, many at once, each fenced by its token. Runs are
		// locked by the statement before (lockRuns), so this one reads
		// their latest state. A terminal outcome counts the dependents
		// down; the run finishes when its last task does. The internal
		// outcome 'rescue' returns an expired lease to the ready set (or
		// fails the task past $11 rescues).
		complete: `
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::json[], $6::text[],
                         $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $13::bool[]/*ops*/,
                         $14::text[], $15::text[], $16::bigint[]/*end*/)
        WITH ORDINALITY AS i(run_id, task, token, outcome, output, err, rec, retry_at, lease_before, at, rr/*ops*/, wfor, child, consume/*end*/, ord)
), m AS MATERIALIZED (
    SELECT i.*, t.idx,/*ops*/
        -- a wait is due at once if a signal it waits for is buffered (the
        -- run row is locked, as SendSignal locks it: this sees them all)
        i.outcome = 'wait' AND t.signal <> '' AND EXISTS (SELECT 1 FROM {s}.signals g
            WHERE g.run_id = t.run_id AND g.name = t.signal AND g.seq <> i.consume) AS sig_ready,
        -- a signal completes a waiting task, which holds no lease
        (i.outcome = 'signal') AS sig,/*end*/
        CASE/*ops*/
            WHEN i.outcome = 'signal' THEN 'succeeded'/*end*/
            WHEN i.outcome IN ('succeeded', 'failed', 'skipped', 'upstream_failed', 'canceled') THEN i.outcome
            WHEN i.outcome = 'rescue' AND t.rescues + 1 > $11 THEN 'failed'
            WHEN (SELECT r.canceled FROM {s}.runs r WHERE r.id = i.run_id) THEN 'canceled'
            ELSE 'pending'
        END AS new_state
    FROM i
    JOIN {s}.tasks t ON t.run_id = i.run_id AND t.idx = (i.token & 32767)::smallint
    WHERE ((t.token = i.token AND t.lease_until IS NOT NULL)/*ops*/
           OR (i.outcome = 'signal' AND t.state = 'pending' AND t.waiting_since IS NOT NULL)/*end*/)
      AND t.name = i.task
      AND (i.lease_before IS NULL OR t.lease_until < i.lease_before)
      AND i.outcome IN ('succeeded', 'failed', 'skipped', 'upstream_failed', 'canceled', 'retry', 'snooze', 'release', 'defer', 'rescue'/*ops*/, 'wait', 'signal'/*end*/)
), done AS (
    UPDATE {s}.tasks t SET
        state = m.new_state,
        output = CASE WHEN m.new_state = 'succeeded' THEN m.output ELSE t.output END,
        error = CASE
            WHEN m.new_state = 'succeeded' THEN NULL
            WHEN m.outcome = 'rescue' AND m.new_state = 'failed'
                THEN format('lease expired %s times (worker lost each time); giving up', t.rescues + 1)
            WHEN m.outcome = 'rescue' THEN t.error
            WHEN m.new_state = 'canceled' AND m.outcome <> 'canceled' THEN 'run canceled'
            ELSE nullif(m.err, '')
        END,
        attempt = t.attempt + CASE WHEN m.outcome IN ('succeeded', 'failed', 'retry') THEN 1 ELSE 0 END,
        rescues = t.rescues + CASE WHEN m.outcome = 'rescue' THEN 1 ELSE 0 END,
        -- appended as text: the record is JSON encoded by the store; a
        -- snooze after a snooze of the same number replaces it, counting
        -- both (Attempt.Snoozes: a polling task's history stays bounded)
        attempts = CASE
            WHEN m.rec IS NULL THEN t.attempts
            WHEN t.attempts IS NULL THEN ('[' || m.rec || ']')::json
            WHEN m.outcome = 'snooze' AND t.attempts -> -1 ->> 'outcome' = 'snooze'
                AND t.attempts -> -1 ->> 'number' = m.rec::json ->> 'number'
                THEN jsonb_set(t.attempts::jsonb, '{-1}', m.rec::jsonb
                    || jsonb_build_object('snoozes', coalesce((t.attempts -> -1 ->> 'snoozes')::int, 1) + 1))::json
            ELSE (left(t.attempts::text, -1) || ',' || m.rec || ']')::json
        END,
        due_at = CASE/*ops*/
            -- a wait: due at once (a signal buffered, or its child runs
            -- all finished: t is the row's latest version, so a child that
            -- finished meanwhile counts), at its time, or never by time
            WHEN m.outcome = 'wait' AND m.new_state = 'pending' AND (m.sig_ready OR (t.kids > 0 AND t.kids_open = 0)) THEN m.at/*end*/
            WHEN m.new_state = 'pending' AND m.retry_at IS NOT NULL THEN m.retry_at ELSE t.due_at END,
        -- due at a given time: the delayed set, out of the claims' way
        -- until a claim whose clock reached it promotes it
        hold = CASE/*ops*/
            WHEN m.outcome = 'wait' AND m.new_state = 'pending' AND (m.sig_ready OR (t.kids > 0 AND t.kids_open = 0)) THEN 0
            WHEN m.outcome = 'wait' AND m.new_state = 'pending' AND m.retry_at IS NULL THEN 6/*end*/
            WHEN m.new_state = 'pending' AND m.retry_at IS NOT NULL THEN 1 ELSE 0 END,/*ops*/
        waiting_since = CASE WHEN m.outcome = 'wait' THEN coalesce(t.waiting_since, m.at) ELSE t.waiting_since END,
        waiting_for = CASE WHEN m.outcome = 'wait' THEN nullif(m.wfor, '') ELSE t.waiting_for END,
        child = CASE WHEN m.outcome = 'wait' AND m.child <> '' THEN m.child ELSE t.child END,/*end*/
        rate_reserved = m.new_state = 'pending' AND m.outcome = 'defer' AND coalesce(m.rr, false),
        -- kept on terminal states, so a repeated completion is recognised
        token = CASE WHEN m.new_state IN ('succeeded', 'failed', 'skipped', 'upstream_failed', 'canceled') THEN t.token END,
        owner = NULL,
        lease_until = NULL,
        last_token = m.token,
        last_outcome = m.outcome
    FROM m
    WHERE t.run_id = m.run_id AND t.idx = m.idx
      AND ((t.lease_until IS NOT NULL AND t.token = m.token)/*ops*/
           OR (m.sig AND t.state = 'pending' AND t.waiting_since IS NOT NULL)/*end*/)
      AND (m.lease_before IS NULL OR t.lease_until < m.lease_before)
    RETURNING m.ord, m.token, t.run_id, t.name, t.dependents, m.new_state, t.error AS err, m.at, m.retry_at, t.tkey, t.hold, m.outcome/*ops*/,
        m.consume/*end*/
), tgu AS (
    -- every completion of a claimed task frees its task-level slot (a
    -- signal completes a task that is not claimed)
    UPDATE {s}.task_groups g SET active = g.active - c.n
    FROM (SELECT tkey, count(*) AS n FROM done WHERE tkey IS NOT NULL AND outcome <> 'signal' GROUP BY tkey) c
    WHERE g.key = c.tkey
    RETURNING g.parked > 0 AS wake
), cnt AS (
    -- ok/bad: a dependency finished as succeeded / as a failure, for
    -- the dependents that fire early on it (fire_on)
    SELECT d.run_id, dep.idx, count(*) AS n, max(d.ord) AS ord,
        bool_or(d.new_state = 'succeeded') AS ok,
        bool_or(d.new_state IN ('failed', 'upstream_failed', 'canceled')) AS bad
    FROM done d CROSS JOIN LATERAL unnest(d.dependents) AS dep(idx)
    WHERE d.new_state <> 'pending'
    GROUP BY d.run_id, dep.idx
), dec AS (
    -- a task at 0 is ready already (or was made ready early): left
    -- alone, so it is made ready once
    UPDATE {s}.tasks t SET pending_deps = CASE
            WHEN (t.fire_on = 'succeeded' AND cnt.ok) OR (t.fire_on = 'failed' AND cnt.bad) THEN 0
            ELSE t.pending_deps - cnt.n END
    FROM cnt
    WHERE t.run_id = cnt.run_id AND t.idx = cnt.idx AND t.pending_deps > 0
    RETURNING cnt.ord, t.pending_deps = 0 AND t.state = 'pending' AS ready
), rc AS (
    -- plain aggregates only (an ORDER BY inside an aggregate sorts per
    -- group): the item reported as finishing a run, the token recorded as
    -- having finished it and the error summarising a failure are each
    -- one of the batch's items of that run
    SELECT run_id, count(*) AS n, count(*) FILTER (WHERE new_state IN ('failed', 'upstream_failed')) AS f, max(ord) AS ord,
        min(CASE WHEN new_state = 'failed' THEN format('task %s failed: %s', name, coalesce(err, '')) END) AS ferr,
        max(at) AS at, max(token) AS token
    FROM done WHERE new_state <> 'pending'
    GROUP BY run_id
), ru AS (
    UPDATE {s}.runs r SET
        tasks_left = r.tasks_left - rc.n,
        failed_tasks = r.failed_tasks + rc.f,
        error = CASE WHEN r.error = '' AND rc.ferr IS NOT NULL THEN rc.ferr ELSE r.error END,
        state = CASE
            WHEN r.tasks_left > rc.n THEN r.state
            WHEN r.canceled THEN 'canceled'
            WHEN r.failed_tasks + rc.f > 0 THEN 'failed'
            ELSE 'succeeded'
        END,
        finished_at = CASE WHEN r.tasks_left > rc.n THEN NULL ELSE coalesce(rc.at, $12) END,
        finished_by = CASE WHEN r.tasks_left > rc.n THEN NULL ELSE rc.token END,
        -- a run whose task completed holds its slot: admit 2 (admitted by
        -- a claim or at creation) or 1 (handed a slot by a completion,
        -- which leaves admit alone and deletes the queue entry)
        admit = CASE WHEN r.tasks_left <= rc.n AND r.admit IN (1, 2) THEN 3 ELSE r.admit END
    FROM rc
    WHERE r.id = rc.run_id
    RETURNING rc.ord, r.state, r.ckey, r.admit, r.id, r.finished_at, r.workflow
), rsu AS (
    -- the finished runs' state rows (run_states; runs indexes neither
    -- column, so the update of runs above stays HOT)
    UPDATE {s}.run_states e SET state = ru.state, finished_at = ru.finished_at
    FROM ru WHERE e.run_id = ru.id AND ru.state <> 'active'
), fr AS (
    -- a run that held a workflow-level slot frees it as it finishes; at
    -- is the completing worker's clock (the claims' clock, not the
    -- database's)
    SELECT ckey, count(*) AS n, max(finished_at) AS at,
        bool_or(workflow = ANY((SELECT coalesce(array_agg(p.workflow), '{}') FROM {s}.paused p)::text[])) AS paused
    FROM ru WHERE state <> 'active' AND admit = 3
    GROUP BY ckey ORDER BY ckey
), ho AS MATERIALIZED (
    -- hand-off: each freed slot admits the group's next due run at once
    -- (priority, then creation), as a claim's admission would, so the
    -- claims that follow need no admission step. One run per slot freed
    -- here: the group's count of admitted runs does not change, so it
    -- needs no reading under a lock (a claim that admits meanwhile does
    -- not count these slots as free); room beyond them, a claim fills. A
    -- queue entry another transaction holds (a cancel, a debounce, a
    -- claim's admission) is left to it; the run row is neither locked nor
    -- written (a cancel waits for the queue entry before it touches the
    -- run's tasks, so the two cannot deadlock). One row per group, the
    -- runs as an array: joins of these CTEs to one another are nested
    -- loops (their sizes are not known when the statement is planned),
    -- quadratic in the batch.
    SELECT fr.ckey AS key, fr.n, fr.at, x.ids FROM fr CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(y.id), '{}') AS ids FROM (
            SELECT q.run_id AS id FROM {s}.run_queue q
            WHERE NOT fr.paused AND q.ckey = fr.ckey AND (q.start_at IS NULL OR q.start_at <= fr.at)
            ORDER BY q.priority DESC, q.created_at, q.run_id
            LIMIT fr.n
            FOR UPDATE OF q SKIP LOCKED
        ) y
    ) x
), hq AS (
    -- admitted: out of the queue (the run row is left as it is, admit 1:
    -- a run with admit 1 and no queue entry holds a slot)
    DELETE FROM {s}.run_queue q USING ho CROSS JOIN LATERAL unnest(ho.ids) AS u(id) WHERE q.run_id = u.id
), ht AS (
    -- the admitted runs' first tasks join the ready set behind the tasks
    -- already in it (due at the admission: FIFO across groups, so a
    -- group's old queued runs do not go ahead of other groups' ready
    -- tasks)
    UPDATE {s}.tasks t SET hold = CASE WHEN t.due_at > ho.at THEN 1 ELSE 0 END, due_at = greatest(t.due_at, ho.at)
    FROM ho CROSS JOIN LATERAL unnest(ho.ids) AS u(id)
    WHERE t.run_id = u.id AND t.state = 'pending' AND t.pending_deps = 0 AND t.hold IN (2, 4)
    RETURNING t.hold
), rgu AS (
    -- the group row, written once (in key order): the slots freed, less
    -- those handed off
    UPDATE {s}.run_groups g SET active = g.active - ho.n + cardinality(ho.ids), waiting = g.waiting - cardinality(ho.ids)
    FROM ho
    WHERE g.key = ho.key
    RETURNING g.waiting > 0 AND g.active < g.max AS wake
)/*ops*/, sd AS (
    -- the signals consumed by accepted completions
    DELETE FROM {s}.signals g USING done d WHERE d.consume <> 0 AND g.run_id = d.run_id AND g.seq = d.consume
)/*end*/
-- One row per fact, no joins between the parts (they would be quadratic
-- in the batch size): d = applied (new state), r = tasks made ready,
-- f = run finished (final state), i = idempotent success, n = a task
-- went back to the ready set.
SELECT 'd', ord, new_state, 0::bigint FROM done
UNION ALL
SELECT 'r', ord, '', count(*) FROM dec WHERE ready GROUP BY ord
UNION ALL
SELECT 'f', ord, state, 0 FROM ru WHERE state <> 'active'
UNION ALL
-- A repeated completion (the task already ended this way under this
-- token: CompleteInTx, or a retry after a lost reply; for retry, snooze and
-- release, last_token and last_outcome remember it) changes nothing
-- and reports what the first one did: the run it finished, and the
-- dependents that are ready now.
SELECT 'i', i.ord, CASE WHEN r0.state <> 'active' AND r0.finished_by = i.token THEN r0.state ELSE '' END,
    (SELECT count(*) FROM unnest(t0.dependents) AS dep(idx)
        JOIN {s}.tasks x ON x.run_id = t0.run_id AND x.idx = dep.idx
        WHERE x.state = 'pending' AND x.pending_deps = 0)
FROM i
JOIN {s}.tasks t0 ON t0.run_id = i.run_id AND t0.idx = (i.token & 32767)::smallint
JOIN {s}.runs r0 ON r0.id = i.run_id
WHERE i.outcome IN ('succeeded', 'failed', 'skipped', 'upstream_failed', 'canceled', 'retry', 'snooze', 'release', 'defer', 'wait') AND i.ord NOT IN (SELECT ord FROM done)
  AND t0.name = i.task
  AND ((t0.token = i.token AND t0.state = i.outcome) OR (t0.last_token = i.token AND t0.last_outcome = i.outcome))
UNION ALL
SELECT 'n', 0, '', count(*) FROM (
    SELECT 1 FROM done WHERE new_state = 'pending' AND (retry_at IS NULL OR retry_at <= $12) AND hold <> 6
    LIMIT 1) x
UNION ALL
-- a slot freed in a group whose runs or tasks wait: work for any instance
SELECT 'n', 0, '', count(*) FROM (
    SELECT 1 FROM tgu WHERE wake UNION ALL SELECT 1 FROM rgu WHERE wake UNION ALL SELECT 1 FROM ht WHERE hold = 0
    LIMIT 1) y`,

		// Running tasks whose lease expired before $1.
		expired: `
SELECT run_id, name, token FROM {s}.tasks
WHERE state = 'running' AND lease_until < $1
ORDER BY lease_until
LIMIT $2`,

		// The claim a transactional completion is about (inside the
		// caller's transaction, after the run lock).
		taskForTx: `
SELECT attempt + 1, claimed_at FROM {s}.tasks
WHERE run_id = $1 AND idx = ($3::bigint & 32767)::smallint AND name = $2 AND token = $3 AND lease_until IS NOT NULL`,

		cancelLock: `SELECT state, canceled FROM {s}.runs WHERE id = $1 FOR NO KEY UPDATE`,
		// Cancel: every pending task is canceled at once (every task not
		// running is pending or finished); running tasks are canceled when
		// their workers report.
		cancel: `
WITH r AS (
    SELECT id, admit FROM {s}.runs WHERE id = $1 AND state = 'active' AND NOT canceled
), dq AS (
    -- a queued run leaves its group's queue (nothing of it runs, so the
    -- cancel finishes it); a run with admit 1 and no queue entry was
    -- handed a slot by a completion and holds it
    DELETE FROM {s}.run_queue q USING r WHERE q.run_id = r.id AND r.admit = 1
    RETURNING q.run_id
), c AS (
    -- after dq (the subquery makes it run first): a completion handing
    -- the run a slot holds its queue entry, then its first task; waiting
    -- for the entry before touching the task, the cancel cannot
    -- deadlock with it
    UPDATE {s}.tasks t SET state = 'canceled', error = $2, token = NULL
    FROM r WHERE t.run_id = r.id AND t.state = 'pending' AND (SELECT count(*) FROM dq) >= 0
    RETURNING t.idx, t.hold, t.tkey
), cp AS (
    UPDATE {s}.task_groups g SET parked = g.parked - x.n
    FROM (SELECT tkey, count(*) AS n FROM c WHERE hold = 5 GROUP BY tkey) x
    WHERE g.key = x.tkey
), n AS (
    SELECT count(*) AS n FROM c
), ru AS (
    UPDATE {s}.runs x SET
        canceled = true,
        error = $2,
        tasks_left = x.tasks_left - n.n,
        state = CASE WHEN x.tasks_left = n.n THEN 'canceled' ELSE x.state END,
        finished_at = CASE WHEN x.tasks_left = n.n THEN $3::timestamptz END,
        admit = CASE WHEN x.tasks_left > n.n THEN x.admit WHEN EXISTS (SELECT 1 FROM dq) THEN 0
            WHEN x.admit IN (1, 2) THEN 3 ELSE x.admit END
    FROM r, n WHERE x.id = r.id
    RETURNING x.state, x.ckey, r.admit AS was, EXISTS (SELECT 1 FROM dq) AS queued, x.id, x.finished_at
), rsu AS (
    UPDATE {s}.run_states e SET state = ru.state, finished_at = ru.finished_at
    FROM ru WHERE e.run_id = ru.id AND ru.state <> 'active'
), gu AS (
    -- a finished run leaves its group: its slot (admitted) or its place
    -- in the queue
    UPDATE {s}.run_groups g SET
        active = g.active - CASE WHEN NOT ru.queued THEN 1 ELSE 0 END,
        waiting = g.waiting - CASE WHEN ru.queued THEN 1 ELSE 0 END
    FROM ru WHERE g.key = ru.ckey AND ru.state <> 'active' AND ru.was IN (1, 2)
)
SELECT (SELECT count(*) FROM r), coalesce((SELECT state FROM ru), '')`,

		// A run snapshot: the run row and its tasks (as JSON, outputs and
		// attempts verbatim) in one statement, so the two agree.
		runSelect: `
SELECT r.id, r.workflow, r.event_id, r.event, r.created_at, r.deadline, r.state, r.error, r.finished_at,
    x.started, x.tasks, r.start_at, r.priority, r.ckey, r.parent_id, r.parent_task, r.retries, x.live
FROM {s}.runs r
CROSS JOIN LATERAL (
    SELECT min(t.first_claimed_at) AS started,
        -- running: a task was claimed (since the run was last reopened)
        CASE WHEN r.reopened_at IS NULL THEN min(t.first_claimed_at) IS NOT NULL
            ELSE max(t.claimed_at) IS NOT NULL END AS live,
        json_agg(json_build_array(t.name, t.state, t.deps, t.output, t.error, t.attempts, t.rescues,
            CASE WHEN t.state = 'pending' AND t.hold <> 6 AND t.due_at > r.created_at THEN t.due_at END,
            t.waiting_since, t.waiting_for, t.child) ORDER BY t.idx) AS tasks
    FROM {s}.tasks t WHERE t.run_id = r.id
) x`,

		// Retention, one batch per statement, walking runs by age (a run
		// cannot finish before it was created).
		pruneBefore: `
WITH v AS (
    SELECT id FROM {s}.runs
    WHERE created_at < $1 AND finished_at < $1
    ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
), dt AS (
    DELETE FROM {s}.tasks t USING v WHERE t.run_id = v.id
), ds AS (
    DELETE FROM {s}.signals g USING v WHERE g.run_id = v.id
), de AS (
    DELETE FROM {s}.run_states e USING v WHERE e.run_id = v.id
), dr AS (
    DELETE FROM {s}.runs r USING v WHERE r.id = v.id RETURNING 1
)
SELECT count(*) FROM dr`,
		// The newest finished run beyond the KeepLast newest (by creation).
		pruneCutoff: `
SELECT created_at, id FROM {s}.runs WHERE state <> 'active'
ORDER BY created_at DESC, id DESC OFFSET $1 LIMIT 1`,
		pruneUpTo: `
WITH v AS (
    SELECT id FROM {s}.runs
    WHERE (created_at, id) <= ($1, $2::uuid) AND state <> 'active'
    ORDER BY created_at, id LIMIT $3 FOR UPDATE SKIP LOCKED
), dt AS (
    DELETE FROM {s}.tasks t USING v WHERE t.run_id = v.id
), ds AS (
    DELETE FROM {s}.signals g USING v WHERE g.run_id = v.id
), de AS (
    DELETE FROM {s}.run_states e USING v WHERE e.run_id = v.id
), dr AS (
    DELETE FROM {s}.runs r USING v WHERE r.id = v.id RETURNING 1
)
SELECT count(*) FROM dr`,

		lastTick: `SELECT last_tick FROM {s}.schedules WHERE name = $1`,
		// Many schedules' ticks at once (each name once), in name order so
		// that concurrent batches lock the rows in the same order. It
		// returns the names whose tick was stored.
		recordTicks: `
INSERT INTO {s}.schedules AS s (name, last_tick)
SELECT u.name, u.tick FROM unnest($1::text[], $2::timestamptz[]) AS u(name, tick) ORDER BY u.name
ON CONFLICT (name) DO UPDATE SET last_tick = EXCLUDED.last_tick, updated_at = now()
WHERE s.last_tick < EXCLUDED.last_tick
RETURNING s.name`,

		notify: `SELECT pg_notify($1, $2)`,
	}
	for _, p := range []*string{
		&q.createRuns, &q.findExisting, &q.countActive, &q.claim, &q.claimPlain, &q.probe, &q.extend, &q.promote, &q.lockRuns,
		&q.complete, &q.expired, &q.taskForTx, &q.cancelLock, &q.cancel, &q.runSelect, &q.pruneBefore,
		&q.pruneCutoff, &q.pruneUpTo, &q.lastTick, &q.recordTicks, &q.notify,
	} {
		*p = r.Replace(*p)
	}
	q.createPlain = plainCreate(q.createRuns)
	q.createClaim = r.Replace(claimingCreate(q.createPlain))
	q.completeStep = r.Replace(stepStatement(false))
	q.completeStepFull = r.Replace(stepStatement(true))
	q.completeLink = r.Replace(linkStatement())
	q.completePlain = plainCompletion(stripOps(q.complete))
	q.complete = keepOps(q.complete)
	q.getRun = q.runSelect + "\nWHERE r.id = $1"
	q.findRun = q.runSelect + "\nWHERE r.workflow = $1 AND r.event_id = $2"
	return q
}

// stripOps removes the /*ops*/ ... /*end*/ spans of a statement: the
// steps of waits, signals and child runs, which only the full completion
// statement has.
func stripOps(s string) string {
	for {
		i := strings.Index(s, "/*ops*/")
		if i < 0 {
			return s
		}
		j := strings.Index(s[i:], "/*end*/")
		if j < 0 {
			panic("batutapg: unterminated /*ops*/ span")
		}
		s = s[:i] + s[i+j+len("/*end*/"):]
	}
}

// keepOps removes the /*ops*/ and /*end*/ markers, keeping the spans.
func keepOps(s string) string {
	return strings.NewReplacer("/*ops*/", "", "/*end*/", "").Replace(s)
}

// plainCompletion returns the completion statement without its
// concurrency-group steps, for batches whose tokens say no task belongs to
// a group (see tokenFlowBit).
func plainCompletion(full string) string {
	cut := func(s, from, to string) string {
		i := strings.Index(s, from)
		j := strings.Index(s[i+len(from):], to)
		if i < 0 || j < 0 {
			panic("batutapg: completion statement layout changed: " + from)
		}
		return s[:i] + s[i+len(from)+j:]
	}
	s := cut(full, "\n), tgu AS (", "\n), cnt AS (")
	s = cut(s, "\n), fr AS (", "\n)\n-- One row per fact")
	i := strings.Index(s, "\nUNION ALL\n-- a slot freed")
	if i < 0 {
		panic("batutapg: completion statement layout changed: slot freed")
	}
	return s[:i]
}

// plainCreate returns the create statement without the steps of child
// runs, admission queues and concurrency groups (pk, q, g, tg), for
// batches with none of them (see createItem.plain): 20-30% less
// execution time for one run. The arguments stay those of the full
// statement; the ones of the steps cut are only typed (a CTE that nothing
// references is not run).
func plainCreate(full string) string {
	cut := func(s, from, to, with string) string {
		i := strings.Index(s, from)
		j := strings.Index(s[i+len(from):], to)
		if i < 0 || j < 0 {
			panic("batutapg: create statement layout changed: " + from)
		}
		return s[:i] + with + s[i+len(from)+j:]
	}
	s := cut(full, "\n), pk AS (", "\n), t AS (", "")
	return cut(s, "\n), g AS (", "\n)\nSELECT r.id FROM r",
		"\n), unused AS (\n    SELECT $28::text[], $29::text[], $30::int[], $31::text[], $32::int[]")
}

// claimingCreate returns the plain create statement (see plainCreate)
// that also leases the new run's root tasks to the caller as it inserts
// them, when no ready task of the caller's workflows ($39) goes ahead of
// them in claim order (priority, then due time) and their workflow is not
// paused: the submit of a run an idle worker can start, without the plain
// claim's statement after the insert (PostgreSQL initialises every node of
// a cached plan on each execution, which for the claim cost as much as
// running it). The caller makes sure the batch is one plain run whose
// root tasks a claim could take and that its claim's limit covers them
// all (see createClaimable); the statement takes all of them or none.
//
// Its rows: one per run created, with whether a ready task of the
// caller's workflows waited (the caller's hint to claim the general way
// next time, which takes it), and the
// columns of a claim of each root task leased (NULL if none). The
// arguments are the plain statement's, then the claim's clock ($38),
// workflows ($39), owner ($40), lease end ($41) and request number ($42).
func claimingCreate(plain string) string {
	i := strings.Index(plain, "\n), t AS (")
	j := strings.Index(plain, "\n), unused AS (")
	k := strings.Index(plain, "\nSELECT r.id FROM r")
	ret := "RETURNING id, ckey, admit, priority, created_at, start_at, parent_id, parent_task, state, workflow, finished_at"
	if i < 0 || j < i || k < j || strings.Count(plain, ret) != 1 {
		panic("batutapg: create statement layout changed")
	}
	lease := strings.NewReplacer("t.dependents", "v.dependents::smallint[]", "t.sub", "v.sub", "t.tkey", "v.tkey",
		"t.rgroup", "v.rgroup", "t.solo", "v.solo", "t.idx", "v.idx").Replace(newLeaseSQL)
	leased := func(v string) string { return "CASE WHEN v.take THEN " + v + " END" }
	steps := `
), top AS MATERIALIZED (
    -- the ready task a claim would take first
    SELECT priority, due_at FROM {s}.tasks
    WHERE state = 'pending' AND pending_deps = 0 AND hold = 0 AND due_at <= $38 AND tkey IS NULL
      AND ($39::text[] IS NULL OR workflow = ANY($39::text[]))
    ORDER BY priority DESC, due_at
    LIMIT 1
), t AS (
    INSERT INTO {s}.tasks (run_id, idx, name, workflow, deps, dependents, pending_deps, solo, state, due_at, fire_on,
        priority, hold, tkey, error, rgroup, signal, sub, owner, token, lease_until, claimed_at, first_claimed_at, claim_req)
    SELECT v.run_id, v.idx, v.name, v.wf, v.deps::smallint[], v.dependents::smallint[], v.ndeps, v.solo,
        CASE WHEN v.take THEN 'running' WHEN v.rej IS NULL THEN 'pending' ELSE 'canceled' END, v.due, v.fire_on, v.prio,
        CASE WHEN v.hold = 0 AND v.ndeps = 0 AND v.rej IS NULL AND v.paused THEN 3 ELSE v.hold END,
        v.tkey, v.rej, v.rgroup, v.sig, v.sub,
        ` + leased("$40::text") + `, ` + leased(lease) + `,
        ` + leased("$41::timestamptz") + `, ` + leased("$38::timestamptz") + `, ` + leased("$38::timestamptz") + `, ` + leased("$42::bigint") + `
    FROM (
        SELECT v.*, v.ndeps = 0 AND NOT v.paused
            AND NOT EXISTS (SELECT 1 FROM top WHERE top.priority > v.prio OR (top.priority = v.prio AND top.due_at < v.due)) AS take
        FROM (
            SELECT u.*, u.wf = ANY((SELECT coalesce(array_agg(p.workflow), '{}') FROM {s}.paused p)::text[]) AS paused
            FROM unnest($8::uuid[], $9::smallint[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int[], $15::bool[],
                        $16::timestamptz[], $17::text[], $24::int[], $25::smallint[], $26::text[], $27::text[], $33::bool[],
                        $36::text[], $37::bool[])
                AS u(run_id, idx, name, wf, deps, dependents, ndeps, solo, due, fire_on, prio, hold, tkey, rej, rgroup, sig, sub)
            WHERE u.run_id IN (SELECT id FROM r)
            OFFSET 0 -- computed once a row, not at each use
        ) v
        OFFSET 0
    ) v
    RETURNING run_id, name, workflow, token, state`
	tail := `
SELECT r.id, EXISTS (SELECT 1 FROM top), c.name, c.workflow, c.token, r.event_id, r.event, r.deadline
FROM r LEFT JOIN t c ON c.run_id = r.id AND c.state = 'running'`
	s := plain[:i] + steps + plain[j:k] + tail
	return strings.Replace(s, ret, ret+", event_id, event, deadline", 1)
}

// stepStatement returns the step statement (see Store.completeStep): one
// task's success and, in the same statement, the claim of the dependent it
// made ready that a claim would take first. It applies only to a task
// still leased under $3 and answers no row otherwise (the caller then
// records the completion with the general statements, which tell a
// repeated completion from a lost lease). The dependents are counted down
// as the completion statement does.
//
// A dependent is taken only if no ready task of $7 goes ahead of it in
// claim order (priority, then due time), so the plain claim's order
// holds; one of a task-level or workflow-level group, one waiting for a
// signal, one not yet due or of a paused workflow is left ready for the
// claims. When it takes no dependent, the full statement (full) takes
// the ready task first in claim order instead, as the plain claim would;
// the lean one takes nothing, leaving the claim to its caller. The lean
// statement's plan is about two thirds the size of the completion's and
// the plain claim's together (PostgreSQL initialises every node of a
// cached plan on each execution, which cost more than executing them);
// the full one's, about the size of both.
//
// Its row: the dependents made ready, how many of them it took, whether a
// ready task of the caller's workflows waited (the caller's hint for the
// full statement), the run's final state if it finished (else empty), and
// the claim's columns (NULL if none).
func stepStatement(full bool) string {
	top := `
    SELECT run_id, idx, workflow, priority, due_at, rate_reserved FROM {s}.tasks
    WHERE state = 'pending' AND pending_deps = 0 AND hold = 0 AND due_at <= $6 AND tkey IS NULL
      AND ($7::text[] IS NULL OR workflow = ANY($7::text[]))
    ORDER BY priority DESC, due_at
    LIMIT 1`
	alt, claims, signal := "", "\n    FROM dec d, ru WHERE d.took", "NULL::json"
	if full {
		// The task ahead is locked as a claim locks what it takes.
		top += "\n    FOR UPDATE SKIP LOCKED"
		alt = `
), alt AS (
    -- no dependent taken: the ready task first in claim order, as the
    -- plain claim takes it
    UPDATE {s}.tasks t
` + claimSetAt("$6", "$8", "$9", "$10") + `    FROM top p
    WHERE t.run_id = p.run_id AND t.idx = p.idx AND NOT EXISTS (SELECT 1 FROM pick)
      AND EXISTS (SELECT 1 FROM done) -- a step not applied claims nothing
      AND NOT (p.workflow = ANY((SELECT coalesce(array_agg(z.workflow), '{}') FROM {s}.paused z)::text[]))
    RETURNING t.run_id, t.name, t.workflow, t.attempt, t.rescues, t.token, t.deps, p.rate_reserved, t.waiting_since, t.signal`
		claims = `
    FROM dec d, ru WHERE d.took
    UNION ALL
    SELECT a.run_id, a.name, a.workflow, a.attempt, a.rescues, a.token, a.deps, a.rate_reserved, a.waiting_since, a.signal,
        r.event_id, r.event, r.deadline
    FROM alt a JOIN {s}.runs r ON r.id = a.run_id`
		signal = `CASE WHEN c.signal <> '' THEN (
        SELECT json_build_array(g.seq, g.sent_at, g.data, g.name) FROM {s}.signals g
        WHERE g.run_id = c.run_id AND g.name = c.signal ORDER BY g.seq LIMIT 1
    ) END`
	}
	return `
WITH done AS (` + stepDone + `
    RETURNING t.run_id, t.idx, t.name, t.dependents
), nx AS MATERIALIZED (
    SELECT x.run_id, x.idx, x.priority, x.due_at,
        x.state = 'pending' AND (x.fire_on = 'succeeded' OR x.pending_deps = 1) AS ready,
        x.hold = 0 AND x.due_at <= $6 AND x.tkey IS NULL AND NOT x.rgroup AND x.signal = ''
            AND ($7::text[] IS NULL OR x.workflow = ANY($7::text[]))
            AND NOT (x.workflow = ANY((SELECT coalesce(array_agg(z.workflow), '{}') FROM {s}.paused z)::text[])) AS free
    FROM done d CROSS JOIN LATERAL unnest(d.dependents) AS dep(i)
    -- a subquery the planner keeps: each dependent looked up by its key
    CROSS JOIN LATERAL (SELECT * FROM {s}.tasks y WHERE y.run_id = d.run_id AND y.idx = dep.i OFFSET 0) x
    WHERE x.pending_deps > 0
), top AS MATERIALIZED (
    -- the ready task the plain claim would take first` + top + `
), pick AS (
    SELECT n.idx FROM nx n
    WHERE n.ready AND n.free
      AND NOT EXISTS (SELECT 1 FROM top WHERE top.priority > n.priority OR (top.priority = n.priority AND top.due_at < n.due_at))
    ORDER BY n.priority DESC, n.due_at, n.idx
    LIMIT 1
), dec AS (
    UPDATE {s}.tasks t SET pending_deps = CASE WHEN t.fire_on = 'succeeded' THEN 0 ELSE t.pending_deps - 1 END,
        state = CASE WHEN p.idx IS NULL THEN t.state ELSE 'running' END,
        owner = CASE WHEN p.idx IS NULL THEN t.owner ELSE $8 END,
        token = CASE WHEN p.idx IS NULL THEN t.token ELSE ` + newLeaseSQL + ` END,
        lease_until = CASE WHEN p.idx IS NULL THEN t.lease_until ELSE $9 END,
        claimed_at = CASE WHEN p.idx IS NULL THEN t.claimed_at ELSE $6 END,
        first_claimed_at = CASE WHEN p.idx IS NULL THEN t.first_claimed_at ELSE coalesce(t.first_claimed_at, $6) END,
        claim_req = CASE WHEN p.idx IS NULL THEN t.claim_req ELSE $10 END,
        rate_reserved = CASE WHEN p.idx IS NULL THEN t.rate_reserved ELSE false END
    FROM nx LEFT JOIN pick p ON p.idx = nx.idx
    WHERE t.run_id = nx.run_id AND t.idx = nx.idx AND t.pending_deps > 0
    RETURNING nx.ready, p.idx IS NOT NULL AS took, t.run_id, t.name, t.workflow, t.attempt, t.rescues, t.token, t.deps,
        false AS rate_reserved, t.waiting_since` + alt + `
), ru AS (
    UPDATE {s}.runs r SET
        tasks_left = r.tasks_left - 1,
        state = CASE
            WHEN r.tasks_left > 1 THEN r.state
            WHEN r.canceled THEN 'canceled'
            WHEN r.failed_tasks > 0 THEN 'failed'
            ELSE 'succeeded'
        END,
        finished_at = CASE WHEN r.tasks_left > 1 THEN NULL ELSE coalesce($11, $6) END,
        finished_by = CASE WHEN r.tasks_left > 1 THEN NULL ELSE $3 END,
        admit = CASE WHEN r.tasks_left <= 1 AND r.admit IN (1, 2) THEN 3 ELSE r.admit END
    FROM done
    WHERE r.id = done.run_id
    RETURNING r.id, r.state, r.finished_at, r.event_id, r.event, r.deadline
), rsu AS (
    UPDATE {s}.run_states e SET state = ru.state, finished_at = ru.finished_at
    FROM ru WHERE e.run_id = ru.id AND ru.state <> 'active'
)
SELECT (SELECT count(*) FROM dec WHERE ready), (SELECT count(*) FROM dec WHERE took), EXISTS (SELECT 1 FROM top),
    CASE WHEN ru.state <> 'active' THEN ru.state ELSE '' END,
    c.run_id, c.name, c.workflow, c.attempt, c.rescues, c.token, c.event_id, c.event, c.deadline, c.rate_reserved,
    CASE WHEN cardinality(c.deps) > 0 THEN (
        -- the task just completed as it is now, not as the statement's
        -- snapshot has it (running)
        SELECT json_agg(CASE WHEN c.run_id = $1 AND u.i = ($3::bigint & 32767)::smallint
                THEN json_build_array(d.name, 'succeeded', $4::json, NULL)
                ELSE json_build_array(d.name, d.state, d.output, d.error) END ORDER BY u.ord)
        FROM unnest(c.deps) WITH ORDINALITY AS u(i, ord)
        CROSS JOIN LATERAL (SELECT * FROM {s}.tasks y WHERE y.run_id = c.run_id AND y.idx = u.i OFFSET 0) d
    ) END,
    c.waiting_since,
    ` + signal + `
FROM ru LEFT JOIN (
    SELECT d.run_id, d.name, d.workflow, d.attempt, d.rescues, d.token, d.deps, d.rate_reserved, d.waiting_since, '' AS signal,
        ru.event_id, ru.event, ru.deadline` + claims + `
) c ON true`
}

// linkStatement returns the link statement: the step statement (lean
// form) for a task with exactly one dependent (tokenLinkBit), the link of
// a chain, in a plan of about half the lean one's nodes. With one
// dependent there is nothing to choose among: whether it is taken is one
// expression over its row, evaluated in the update that counts it down,
// beside one row read first with the paused workflows and the ready task
// the plain claim would take first (g). The dependent's dependencies'
// results are built from the statement's own values when it has only
// this one; a join's are read as the step statement reads them.
//
// It applies only while the dependent is pending and still to be counted
// down, so the run cannot finish (the dependent is left): the run's update
// is one task fewer. It answers no row when the task is not leased under
// $3, has other than one dependent (a token from before tokenLinkBit, see
// tokenDepsBit), or its dependent was already counted down to zero (a join
// that fired on an earlier success) or finished (a canceled run's); the
// caller then records the completion the general way. Its row is the step statement's, except
// that the claim's columns are also set for a dependent made ready and
// not taken (took tells them apart).
func linkStatement() string {
	take := `(t.state = 'pending' AND (t.fire_on = 'succeeded' OR t.pending_deps = 1)
            AND t.hold = 0 AND t.due_at <= $6 AND t.tkey IS NULL AND NOT t.rgroup AND t.signal = ''
            AND ($7::text[] IS NULL OR t.workflow = ANY($7::text[])) AND NOT (t.workflow = ANY(g.paused))
            AND (g.priority IS NULL OR g.priority < t.priority OR (g.priority = t.priority AND g.due_at >= t.due_at)))`
	set := func(col, v string) string {
		return "\n        " + col + " = CASE WHEN " + take + "\n            THEN " + v + " ELSE t." + col + " END"
	}
	return `
WITH done AS (` + stepDone + `
      AND cardinality(t.dependents) = 1
      -- the dependent still to run and to be counted down (a scalar
      -- subquery: looked up by its whole key); a cancel finishes it
      -- without counting it down
      AND (SELECT x.state = 'pending' AND x.pending_deps > 0 FROM {s}.tasks x WHERE x.run_id = $1 AND x.idx = t.dependents[1])
    RETURNING t.run_id, t.dependents[1] AS dep
), g AS MATERIALIZED (
    -- one row: the paused workflows, and the ready task the plain claim
    -- would take first (NULL if none)
    SELECT z.paused, p.priority, p.due_at
    FROM (SELECT coalesce(array_agg(workflow), '{}')::text[] AS paused FROM {s}.paused) z
    LEFT JOIN (
        SELECT priority, due_at FROM {s}.tasks
        WHERE state = 'pending' AND pending_deps = 0 AND hold = 0 AND due_at <= $6 AND tkey IS NULL
          AND ($7::text[] IS NULL OR workflow = ANY($7::text[]))
        ORDER BY priority DESC, due_at
        LIMIT 1
    ) p ON true
), dec AS (
    UPDATE {s}.tasks t SET pending_deps = CASE WHEN t.fire_on = 'succeeded' THEN 0 ELSE t.pending_deps - 1 END,` +
		set("state", "'running'") + "," + set("owner", "$8") + "," + set("token", newLeaseSQL) + "," +
		set("lease_until", "$9") + "," + set("claimed_at", "$6") + "," + set("first_claimed_at", "coalesce(t.first_claimed_at, $6)") + "," +
		set("claim_req", "$10") + "," + set("rate_reserved", "false") + `
    FROM done d, g
    WHERE t.run_id = d.run_id AND t.idx = d.dep AND t.pending_deps > 0
    -- made ready: counted down to zero and still pending (or taken);
    -- taken: running (it was pending)
    RETURNING t.pending_deps = 0 AND t.state IN ('pending', 'running') AS ready, t.state = 'running' AS took, g.priority IS NOT NULL AS waited,
        t.run_id, t.name, t.workflow, t.attempt, t.rescues, t.token, t.deps, t.waiting_since
), ru AS (
    UPDATE {s}.runs r SET tasks_left = r.tasks_left - 1
    FROM done
    WHERE r.id = done.run_id
    RETURNING r.event_id, r.event, r.deadline, $11::timestamptz AS unused
)
SELECT CASE WHEN c.ready THEN 1 ELSE 0 END::bigint, CASE WHEN c.took THEN 1 ELSE 0 END::bigint, c.waited, '',
    c.run_id, c.name, c.workflow, c.attempt, c.rescues, c.token, ru.event_id, ru.event, ru.deadline, false,
    CASE WHEN NOT c.took THEN NULL
    WHEN cardinality(c.deps) = 1 THEN json_build_array(json_build_array($2::text, 'succeeded', $4::json, NULL))
    ELSE (
        -- a join: the task just completed as it is now, not as the
        -- statement's snapshot has it (running)
        SELECT json_agg(CASE WHEN y.idx = ($3::bigint & 32767)::smallint
                THEN json_build_array(y.name, 'succeeded', $4::json, NULL)
                ELSE json_build_array(y.name, y.state, y.output, y.error) END ORDER BY u.ord)
        FROM unnest(c.deps) WITH ORDINALITY AS u(i, ord)
        CROSS JOIN LATERAL (SELECT * FROM {s}.tasks y WHERE y.run_id = c.run_id AND y.idx = u.i OFFSET 0) y
    ) END,
    c.waiting_since, NULL::json
FROM ru, dec c`
}

// stepDone is the step and link statements' update of the completed
// task, applied only while it is leased under $3.
const stepDone = `
    UPDATE {s}.tasks t SET state = 'succeeded', output = $4, error = NULL, attempt = t.attempt + 1,
        attempts = CASE
            WHEN $5::text IS NULL THEN t.attempts
            WHEN t.attempts IS NULL THEN ('[' || $5::text || ']')::json
            ELSE (left(t.attempts::text, -1) || ',' || $5::text || ']')::json
        END,
        hold = 0, rate_reserved = false, owner = NULL, lease_until = NULL, last_token = $3, last_outcome = 'succeeded'
    WHERE t.run_id = $1 AND t.idx = ($3::bigint & 32767)::smallint AND t.token = $3 AND t.lease_until IS NOT NULL AND t.name = $2`

// claimSetAt is claimSet with the claim's clock, owner, lease end and
// request number in the parameters named.
func claimSetAt(now, owner, lease, req string) string {
	return strings.NewReplacer("$1", now, "$4", owner, "$5", lease, "$6", req).Replace(claimSet)
}

// The two claim statements (claim, claimPlain) share how a claimed task is
// marked running and what a claim returns: its lease token (with the flags
// in its low bits that route its completion), its dependencies' results,
// its wait start and the oldest signal buffered for it.
const (
	// newLeaseSQL computes a claimed task's new lease token (see tokenChildBit).
	newLeaseSQL = `nextval('{s}.tokens') * 1048576 + CASE WHEN cardinality(t.dependents) = 1 THEN 524288 ELSE 0 END + CASE WHEN cardinality(t.dependents) > 0 THEN 262144 ELSE 0 END + CASE WHEN t.sub THEN 131072 ELSE 0 END + CASE WHEN t.tkey IS NOT NULL OR t.rgroup THEN 65536 ELSE 0 END + CASE WHEN t.solo THEN 32768 ELSE 0 END + t.idx`
	claimSet    = `    SET state = 'running', owner = $4, token = ` + newLeaseSQL + `, lease_until = $5,
        claimed_at = $1, first_claimed_at = coalesce(t.first_claimed_at, $1), claim_req = $6, rate_reserved = false, hold = 0
`
	claimReturning = `    RETURNING t.run_id, t.name, t.workflow, t.attempt, t.rescues, t.token, t.deps, p.rate_reserved, p.priority, p.due_at,
        t.signal, t.waiting_since
)
SELECT c.run_id, c.name, c.workflow, c.attempt, c.rescues, c.token, r.event_id, r.event, r.deadline, c.rate_reserved,
    CASE WHEN cardinality(c.deps) > 0 THEN (
        SELECT json_agg(json_build_array(d.name, d.state, d.output, d.error) ORDER BY u.ord)
        FROM unnest(c.deps) WITH ORDINALITY AS u(i, ord)
        -- a subquery the planner keeps: each dependency looked up by its
        -- key, not the run's every task read to join them
        CROSS JOIN LATERAL (SELECT * FROM {s}.tasks y WHERE y.run_id = c.run_id AND y.idx = u.i OFFSET 0) d
    ) END,
    c.waiting_since,
    -- the oldest signal buffered for the task's signal name
    CASE WHEN c.signal <> '' THEN (
        SELECT json_build_array(g.seq, g.sent_at, g.data, g.name) FROM {s}.signals g
        WHERE g.run_id = c.run_id AND g.name = c.signal ORDER BY g.seq LIMIT 1
    ) END
FROM claimed c JOIN {s}.runs r ON r.id = c.run_id
ORDER BY c.priority DESC, c.due_at`
)
