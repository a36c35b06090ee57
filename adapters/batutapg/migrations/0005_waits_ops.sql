-- batuta Store schema, version 5: durable waits (OutcomeWait, signals,
-- child runs) and operations (listing filters, retry, statistics).
--
-- A task handed back with OutcomeWait is pending again, holding no worker:
-- due at a time, it is in the delayed set (hold 1) like a retry; due only
-- when woken (a signal, its last child run finishing), it is in the new
-- waiting set, hold 6, which no claim, promotion or NextDue scans. A wake
-- moves it to the ready set (hold 0, or 3 while its workflow is paused).

-- The parent (run and task) of a child run, and how often the run was
-- reopened by RetryRun.
ALTER TABLE runs ADD COLUMN parent_id uuid;
ALTER TABLE runs ADD COLUMN parent_task text COLLATE "C";
ALTER TABLE runs ADD COLUMN retries integer NOT NULL DEFAULT 0;
-- When RetryRun last reopened the run: it is pending again (not running)
-- until a task of it is claimed again (RetryRun clears tasks.claimed_at).
ALTER TABLE runs ADD COLUMN reopened_at timestamptz;

-- signal: TaskSpec.Signal ('' none). waiting_since / waiting_for: the wait
-- record (kept once the task finished). child: the child run the task
-- started. kids / kids_open: the runs created with this task as Parent,
-- and those of them not finished yet; a child run finishing counts
-- kids_open down under the task row's lock, and the one that reaches 0
-- wakes the task (so siblings finishing at once in different transactions
-- cannot lose the wake). sub: the task's run has a parent (its lease tokens
-- carry a bit so that completions look for a parent to wake).
ALTER TABLE tasks ADD COLUMN signal text COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN waiting_since timestamptz;
ALTER TABLE tasks ADD COLUMN waiting_for text;
ALTER TABLE tasks ADD COLUMN child text;
ALTER TABLE tasks ADD COLUMN kids integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN kids_open integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN sub boolean NOT NULL DEFAULT false;

-- The waiting set (for counting unfinished runs; claims never look at it).
CREATE INDEX tasks_waiting ON tasks (run_id) WHERE state = 'pending' AND hold = 6;

-- Signals buffered for a run, in the order they were sent (seq), deleted
-- when a completion consumes them or with their run (Prune).
CREATE SEQUENCE signal_seq AS bigint;
CREATE TABLE signals (
    run_id  uuid NOT NULL,
    seq     bigint NOT NULL,
    name    text COLLATE "C" NOT NULL,
    data    json,
    sent_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Listing (RunFilter) and statistics: keyset pagination in run ID order by
-- workflow, by state, by parent and by subject, and the runs finished in a
-- time window. Indexing state and finished_at makes the update that
-- finishes a run (and only that one) a non-HOT update; the updates a run
-- gets while its tasks finish stay HOT. runs_state leaves out succeeded
-- runs, the dense state (a listing of them walks the primary key or
-- runs_workflow and finds them at once), so most finishes insert nothing
-- into it.
CREATE INDEX runs_workflow ON runs (workflow, id);
CREATE INDEX runs_state ON runs (state, id) WHERE state <> 'succeeded';
CREATE INDEX runs_finished ON runs (finished_at) INCLUDE (workflow, state, created_at) WHERE finished_at IS NOT NULL;
CREATE INDEX runs_parent ON runs (parent_id, parent_task, id) WHERE parent_id IS NOT NULL;
CREATE INDEX runs_subject ON runs ((event->>'subject'), id) WHERE event->>'subject' IS NOT NULL;
CREATE INDEX runs_event ON runs (event_id, id);
