-- batutasqlite schema, version 3: flow control (issue 11): delayed runs,
-- priorities, concurrency groups, debounce, pause and rate limits.
--
-- A pending task whose dependencies are done is claimable when none of its
-- holds is set:
--   delayed  its due_at is (or was, at the last write) in the future: a
--            run's start time, a retry, a snooze or a deferral. ClaimTasks
--            first clears it on the tasks that came due (through
--            batuta_tasks_delayed), so the claim index never holds waiting
--            work and NextDue is one index lookup.
--   paused   its workflow is paused (batuta_paused). Set lazily: by SetPaused
--            on the workflow's delayed tasks, by a claim on a task of a paused
--            workflow it meets in the claim index, and by the promotion of a
--            due task of a paused workflow; cleared by the resume.
--   gated    1: its run waits for admission into its concurrency group
--            (ConcurrencyQueue); cleared on all the run's tasks at admission.
--            2: parked: a claim found its task-level group full; a freed
--            slot of the group clears it on one parked task.
ALTER TABLE batuta_runs ADD COLUMN start_at INTEGER;                          -- NULL: could start at once
ALTER TABLE batuta_runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batuta_runs ADD COLUMN concurrency_key TEXT;                      -- NULL: no workflow-level limit
ALTER TABLE batuta_runs ADD COLUMN concurrency_max INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batuta_runs ADD COLUMN concurrency_strategy INTEGER NOT NULL DEFAULT 0;
-- adm is the run's place in its group: 0 none (no limit, or it left the
-- group), 1 admitted (holds a slot), 2 waiting and due (counted in
-- batuta_groups.eligible), 3 waiting for its start time.
ALTER TABLE batuta_runs ADD COLUMN adm INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batuta_runs ADD COLUMN debounce_key TEXT;                         -- NULL: not debounced

ALTER TABLE batuta_tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;    -- the run's
ALTER TABLE batuta_tasks ADD COLUMN delayed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batuta_tasks ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batuta_tasks ADD COLUMN gated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batuta_tasks ADD COLUMN rate_reserved INTEGER NOT NULL DEFAULT 0; -- last completion: OutcomeDefer with RateReserved
ALTER TABLE batuta_tasks ADD COLUMN concurrency_key TEXT;                    -- TaskSpec.Concurrency.Key
ALTER TABLE batuta_tasks ADD COLUMN concurrency_max INTEGER NOT NULL DEFAULT 0;

-- Round-robin order of admissions (batuta_groups.last_admitted).
INSERT INTO batuta_counters (name, value) VALUES ('admit_seq', 0);

-- Tasks waiting from an older version (retries, snoozes) go through the
-- delayed index once: the next claim clears the hold of those that are due.
UPDATE batuta_tasks SET delayed = 1 WHERE state = 'pending' AND pending_deps = 0;

-- The claim index: claimable tasks, higher priority first, then in due
-- order. It replaces version 1's batuta_tasks_ready (due_at only).
DROP INDEX batuta_tasks_ready;
CREATE INDEX batuta_tasks_claim ON batuta_tasks (priority DESC, due_at)
    WHERE state = 'pending' AND pending_deps = 0 AND delayed = 0 AND paused = 0 AND gated = 0;
-- Waiting for a time (and not paused: a paused task keeps its delayed
-- hold until the workflow is resumed): promotion by ClaimTasks, and NextDue.
CREATE INDEX batuta_tasks_delayed ON batuta_tasks (due_at) WHERE state = 'pending' AND delayed = 1 AND paused = 0;
-- A workflow's delayed tasks: NextDue for the claimer's workflows, and the
-- pause, which holds them out of the delayed index.
CREATE INDEX batuta_tasks_delayed_wf ON batuta_tasks (workflow, due_at) WHERE state = 'pending' AND delayed = 1 AND paused = 0;
-- Resume finds the paused tasks of a workflow.
CREATE INDEX batuta_tasks_paused ON batuta_tasks (workflow) WHERE paused = 1;
-- Members of a concurrency group: runs waiting for a slot in admission
-- order, and admitted runs oldest first (CancelInProgress). Queries repeat
-- the predicate (adm = 2, adm = 1) so that SQLite picks the partial index.
CREATE INDEX batuta_runs_waiting ON batuta_runs (concurrency_key, priority DESC, created_at) WHERE adm = 2;
CREATE INDEX batuta_runs_admitted ON batuta_runs (concurrency_key, created_at) WHERE adm = 1;
-- Debounce: the pending run of a workflow and key.
CREATE INDEX batuta_runs_debounce ON batuta_runs (workflow, debounce_key, created_at)
    WHERE debounce_key IS NOT NULL AND state = 'pending';

-- Workflow-level concurrency groups with members (runs with adm > 0). The
-- row is deleted when its last member leaves. last_admitted orders groups
-- round-robin: the group that admitted least recently goes first.
CREATE TABLE batuta_groups (
    key           TEXT    NOT NULL PRIMARY KEY,
    max           INTEGER NOT NULL,           -- the latest run's Max
    admitted      INTEGER NOT NULL DEFAULT 0, -- runs with adm = 1
    eligible      INTEGER NOT NULL DEFAULT 0, -- runs with adm = 2
    members       INTEGER NOT NULL DEFAULT 0, -- runs with adm > 0
    last_admitted INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX batuta_groups_admit ON batuta_groups (last_admitted) WHERE eligible > 0 AND admitted < max;

-- Task-level concurrency groups: running (claimed, not completed) and
-- parked (gated = 2) tasks. The row is deleted when both drop to 0.
CREATE TABLE batuta_task_groups (
    key     TEXT    NOT NULL PRIMARY KEY,
    running INTEGER NOT NULL,
    parked  INTEGER NOT NULL DEFAULT 0
) STRICT;
-- Parked tasks of a task-level group, in claim order.
CREATE INDEX batuta_tasks_parked ON batuta_tasks (concurrency_key, priority DESC, due_at) WHERE gated = 2;

-- Paused workflows.
CREATE TABLE batuta_paused (
    workflow  TEXT    NOT NULL PRIMARY KEY,
    paused_at INTEGER NOT NULL
) STRICT;

-- Rate limits: the GCRA theoretical arrival time of each key.
CREATE TABLE batuta_rates (
    key TEXT    NOT NULL PRIMARY KEY,
    tat INTEGER NOT NULL
) STRICT;
