-- batuta Store schema, version 4: flow control (delayed runs, priorities,
-- concurrency groups, debounce, pause, rate limits).
--
-- The claim only scans tasks that are claimable now: a pending task whose
-- dependencies are done is in exactly one of these sets, by tasks.hold:
--   0  ready: claimable (tasks_ready, in claim order)
--   1  delayed: due_at in the future (tasks_delayed)
--   2  waiting for its run's admission to a full concurrency group
--   3  its workflow is paused (tasks_paused)
--   4  delayed, and its run waits for admission once due
--   5  parked: its task-level concurrency group was full when a claim
--      met it (tasks_parked)
-- A claim transaction first promotes the delayed tasks that came due
-- (1 -> 0 or 3, 4 -> 2) and unparks tasks of task groups with room
-- (5 -> 0), then claims from the ready set, admitting queued runs of
-- groups with room in the same statement (their first tasks: 2 -> claimed
-- or ready, 4 -> 1).

ALTER TABLE runs ADD COLUMN start_at timestamptz;          -- NewRun.StartAt / debounce (null: at once)
ALTER TABLE runs ADD COLUMN priority integer NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN ckey text COLLATE "C";          -- workflow-level concurrency group
-- admit: 0 no group, 1 queued for admission, 2 admitted (holds a slot),
-- 3 finished after holding a slot (slot freed).
ALTER TABLE runs ADD COLUMN admit smallint NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN dkey text COLLATE "C";          -- debounce group

-- Only columns that never change are indexed (admit is not), so the
-- updates a run gets, admission and finish included, stay HOT.
CREATE INDEX runs_group ON runs (ckey, created_at, id) WHERE ckey IS NOT NULL;
CREATE INDEX runs_debounce ON runs (workflow, dkey, start_at) WHERE dkey IS NOT NULL;

-- The queue of each group, in admission order: a row per queued run
-- (admit 1), deleted when the run is admitted or canceled.
CREATE TABLE run_queue (
    ckey       text COLLATE "C" NOT NULL,
    priority   integer NOT NULL,
    created_at timestamptz NOT NULL,
    run_id     uuid NOT NULL,
    start_at   timestamptz
);
CREATE UNIQUE INDEX run_queue_order ON run_queue (ckey, priority DESC, created_at, run_id);
CREATE UNIQUE INDEX run_queue_run ON run_queue (run_id);

ALTER TABLE tasks ADD COLUMN priority integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN hold smallint NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN tkey text COLLATE "C";         -- task-level concurrency group
ALTER TABLE tasks ADD COLUMN rate_reserved boolean NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN rgroup boolean NOT NULL DEFAULT false;   -- its run is in a workflow-level group

-- Existing retries due later move to the delayed set.
UPDATE tasks SET hold = 1 WHERE state = 'pending' AND pending_deps = 0 AND due_at > now();

DROP INDEX tasks_ready;
CREATE INDEX tasks_ready ON tasks (priority DESC, due_at) WHERE state = 'pending' AND pending_deps = 0 AND hold = 0;
CREATE INDEX tasks_delayed ON tasks (due_at) WHERE state = 'pending' AND pending_deps = 0 AND hold IN (1, 4);
CREATE INDEX tasks_paused ON tasks (workflow) WHERE state = 'pending' AND hold = 3;
-- Ready tasks of task-level groups (the claim checks whether any exists).
CREATE INDEX tasks_limited ON tasks (due_at) WHERE state = 'pending' AND pending_deps = 0 AND hold = 0 AND tkey IS NOT NULL;
CREATE INDEX tasks_parked ON tasks (tkey, priority DESC, due_at) WHERE state = 'pending' AND pending_deps = 0 AND hold = 5;

-- Workflow-level concurrency groups: active counts admitted unfinished
-- runs, waiting the queued ones. active only grows under the row lock and
-- while active < max, in the claim (admission) or the create
-- (CancelInProgress, CancelNewest) transaction; it shrinks in the
-- transaction that finishes the run.
CREATE TABLE run_groups (
    key        text COLLATE "C" PRIMARY KEY,
    workflow   text COLLATE "C" NOT NULL,
    max        integer NOT NULL,
    active     integer NOT NULL DEFAULT 0,
    waiting    integer NOT NULL DEFAULT 0,
    last_admit timestamptz NOT NULL DEFAULT '-infinity' -- round-robin turn
);
CREATE INDEX run_groups_turn ON run_groups (last_admit) WHERE waiting > 0 AND active < max;

-- Task-level concurrency groups: active counts running tasks, grown by the
-- claim (conditionally, under the row lock), shrunk by every completion;
-- parked counts the group's parked tasks (hold 5), which claims unpark
-- while the group has room.
CREATE TABLE task_groups (
    key    text COLLATE "C" PRIMARY KEY,
    max    integer NOT NULL,
    active integer NOT NULL DEFAULT 0,
    parked integer NOT NULL DEFAULT 0
);
CREATE INDEX task_groups_unpark ON task_groups (key) WHERE parked > 0 AND active < max;

CREATE TABLE paused (
    workflow  text COLLATE "C" PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);

-- GCRA state per rate key: the theoretical arrival time, and the slot the
-- last reservation got. A row whose tat has passed says nothing a missing
-- row would not, so such rows are deleted now and then.
CREATE TABLE rates (
    key  text COLLATE "C" PRIMARY KEY,
    tat  timestamptz NOT NULL,
    slot timestamptz NOT NULL
);
