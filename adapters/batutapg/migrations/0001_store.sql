-- batuta Store schema, version 1.
--
-- Applied by (*batutapg.Store).Migrate inside one transaction, holding an
-- advisory lock, with search_path set to the configured schema: names here
-- are unqualified on purpose.

-- One row per run. The run row is the lock that serialises every change to
-- the run's DAG bookkeeping (completions, cancel, rescue lock it first).
CREATE TABLE runs (
    id           uuid PRIMARY KEY,           -- UUIDv7 chosen by the orchestrator
    workflow     text COLLATE "C" NOT NULL,  -- "C": keys compare as bytes, cheaply
    event_id     text COLLATE "C" NOT NULL,
    event        json NOT NULL,               -- the Event minus its ID, JSON text kept verbatim
    created_at   timestamptz NOT NULL,
    deadline     timestamptz,
    tasks_total  integer NOT NULL,
    tasks_left   integer NOT NULL,            -- tasks not yet in a terminal state
    failed_tasks integer NOT NULL DEFAULT 0,
    canceled     boolean NOT NULL DEFAULT false, -- CancelRun was called
    state        text NOT NULL DEFAULT 'active', -- active | succeeded | failed | canceled
    error        text NOT NULL DEFAULT '',
    finished_at  timestamptz,
    finished_by  bigint,                      -- lease token of the completion that finished the run
    CONSTRAINT runs_dedupe UNIQUE (workflow, event_id)
) WITH (fillfactor = 50);

-- Runs by age, for Prune. Only columns that never change are indexed (with
-- the primary key and the dedupe key), so the updates a run gets as its
-- tasks finish are HOT updates that touch no index; the free space left
-- by fillfactor keeps room for them on the row's page.
CREATE INDEX runs_created_at ON runs (created_at, id);

-- One row per task of a run. pending_deps counts the dependencies that are
-- not yet terminal; a pending task with pending_deps = 0 whose due_at has
-- passed is ready.
CREATE TABLE tasks (
    run_id           uuid NOT NULL,
    idx              smallint NOT NULL,       -- position in the workflow's task list
    name             text COLLATE "C" NOT NULL,
    workflow         text COLLATE "C" NOT NULL,
    deps             smallint[] NOT NULL,     -- idx of direct dependencies, in declared order
    dependents       smallint[] NOT NULL,     -- idx of tasks that depend on this one
    pending_deps     integer NOT NULL,
    solo             boolean NOT NULL,        -- the run has no other task
    state            text NOT NULL,           -- pending | running | succeeded | failed | skipped | canceled
    due_at           timestamptz NOT NULL,    -- earliest start of the next attempt
    attempt          integer NOT NULL DEFAULT 0, -- attempts spent
    rescues          integer NOT NULL DEFAULT 0, -- lease expiries
    token            bigint,                  -- the lease token of the current or last claim
    owner            text,
    lease_until      timestamptz,
    claimed_at       timestamptz,             -- start of the current or last claim
    first_claimed_at timestamptz,
    output           json,                    -- JSON text kept verbatim
    error            text,
    attempts         json,                    -- array of attempt records, oldest first
    PRIMARY KEY (run_id, idx)
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

-- The claim query walks this index in due_at order.
CREATE INDEX tasks_ready ON tasks (due_at) WHERE state = 'pending' AND pending_deps = 0;

-- The rescuer walks this index.
CREATE INDEX tasks_leased ON tasks (lease_until) WHERE state = 'running';

-- Lease tokens: unique per claim.
CREATE SEQUENCE tokens AS bigint CACHE 64;

-- Last fired tick per cron schedule.
CREATE TABLE schedules (
    name       text COLLATE "C" PRIMARY KEY,
    last_tick  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
