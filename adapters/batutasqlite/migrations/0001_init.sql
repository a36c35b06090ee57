-- batutasqlite schema, version 1.
--
-- Times are INTEGER unix nanoseconds (UTC); NULL means "not set".
-- The run's Event, task outputs and attempt records are JSON text.

-- One row per run. (workflow, event_id) is the dedupe key, enforced by a
-- UNIQUE constraint: a second CreateRun for the same key inserts nothing.
CREATE TABLE batuta_runs (
    id               TEXT    NOT NULL PRIMARY KEY, -- UUIDv7
    workflow         TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    event            TEXT    NOT NULL,             -- batuta.Event as JSON
    state            TEXT    NOT NULL,             -- pending, running, succeeded, failed, canceled
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    deadline         INTEGER,
    error            TEXT    NOT NULL DEFAULT '',
    canceled         INTEGER NOT NULL DEFAULT 0,   -- CancelRun was called
    unfinished_tasks INTEGER NOT NULL,             -- tasks not yet in a terminal state
    failed_tasks     INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT batuta_runs_dedupe UNIQUE (workflow, event_id)
) STRICT;

-- Retention (Prune) walks finished runs by finish time.
CREATE INDEX batuta_runs_finished ON batuta_runs (finished_at) WHERE finished_at IS NOT NULL;
-- ListRuns: newest first (run IDs are UUIDv7, time-ordered), by workflow.
CREATE INDEX batuta_runs_workflow ON batuta_runs (workflow, id);

-- One row per task of a run. pending_deps counts dependencies not yet in a
-- terminal state; a pending task with pending_deps = 0 whose due_at has come
-- is ready to be claimed.
CREATE TABLE batuta_tasks (
    run_id         TEXT    NOT NULL,
    idx            INTEGER NOT NULL,                -- declaration order
    name           TEXT    NOT NULL,
    workflow       TEXT    NOT NULL,                -- copied from the run for claims
    deps           TEXT    NOT NULL DEFAULT '[]',   -- JSON array of idx, TaskSpec.Deps order
    dependents     TEXT    NOT NULL DEFAULT '[]',   -- JSON array of idx
    state          TEXT    NOT NULL,                -- pending, running, succeeded, failed, skipped, canceled
    pending_deps   INTEGER NOT NULL,
    due_at         INTEGER NOT NULL,                -- next attempt due
    attempts_spent INTEGER NOT NULL DEFAULT 0,
    rescues        INTEGER NOT NULL DEFAULT 0,
    token          INTEGER,                         -- lease token while running
    owner          TEXT,
    lease_until    INTEGER,
    output         TEXT,                            -- JSON
    error          TEXT    NOT NULL DEFAULT '',
    attempts       TEXT    NOT NULL DEFAULT '[]',   -- JSON array of batuta.Attempt
    PRIMARY KEY (run_id, idx),
    CONSTRAINT batuta_tasks_name UNIQUE (run_id, name)
) STRICT;

-- The ready set, in due order (ClaimTasks).
CREATE INDEX batuta_tasks_ready ON batuta_tasks (due_at) WHERE state = 'pending' AND pending_deps = 0;
-- Leases to rescue (RescueExpired).
CREATE INDEX batuta_tasks_leases ON batuta_tasks (lease_until) WHERE state = 'running';

-- Counters kept in the same transactions as the rows they count, so that
-- MaxActive is checked in O(1) and lease tokens are unique.
CREATE TABLE batuta_counters (
    name  TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
INSERT INTO batuta_counters (name, value) VALUES ('active_runs', 0), ('lease_token', 0);

-- The last fired tick of each cron schedule.
CREATE TABLE batuta_ticks (
    schedule TEXT    NOT NULL PRIMARY KEY,
    tick     INTEGER NOT NULL
) STRICT;
