-- batutasqlite schema, version 4: durable waits (issue 13) and operations
-- (issue 12): tasks that wait (OutcomeWait), buffered signals, child runs,
-- run retries, and the indexes ListRuns' filters and WorkflowStats read.
--
-- A waiting task (pending after OutcomeWait) keeps the delayed hold of
-- version 3 with due_at at its timer or timeout; one that waits with no time
-- limit has due_at = 9223372036854775807 (the largest INTEGER, "never"),
-- which no claim promotes and NextDue skips. A signal, or the end of the
-- task's last child run, sets its due_at to now.
ALTER TABLE batuta_tasks ADD COLUMN signal TEXT;            -- TaskSpec.Signal; NULL: none
ALTER TABLE batuta_tasks ADD COLUMN waiting_since INTEGER;  -- first OutcomeWait; kept as a record
ALTER TABLE batuta_tasks ADD COLUMN waiting_for TEXT;       -- the last OutcomeWait's Completion.WaitFor
ALTER TABLE batuta_tasks ADD COLUMN child TEXT;             -- Completion.Child: the child run's ID

ALTER TABLE batuta_runs ADD COLUMN parent_run TEXT;         -- NewRun.Parent; NULL: not a child run
ALTER TABLE batuta_runs ADD COLUMN parent_task TEXT;
ALTER TABLE batuta_runs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0; -- RetryRun count
-- The event's Subject (NULL if empty), for ListRuns by subject: a column
-- written with the event, so inserts do not parse the event's JSON.
ALTER TABLE batuta_runs ADD COLUMN subject TEXT;
UPDATE batuta_runs SET subject = nullif(json_extract(event, '$.subject'), '');

-- Signals sent to a run before a task of it reached its wait (SendSignal),
-- consumed by the claim of that task (Completion.ConsumeSignal) or deleted
-- with the run (Prune). seq orders them and is never reused.
CREATE TABLE batuta_signals (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT    NOT NULL,
    name    TEXT    NOT NULL,
    data    TEXT,                                          -- JSON
    sent_at INTEGER NOT NULL
) STRICT;
CREATE INDEX batuta_signals_run ON batuta_signals (run_id, name, seq);

-- Child runs: ListRuns by parent, and the wake of the parent's task when
-- its last unfinished child finishes (batuta_runs_children_open).
CREATE INDEX batuta_runs_parent ON batuta_runs (parent_run, parent_task, id) WHERE parent_run IS NOT NULL;
CREATE INDEX batuta_runs_parent_any ON batuta_runs (parent_run, id) WHERE parent_run IS NOT NULL;
CREATE INDEX batuta_runs_children_open ON batuta_runs (parent_run, parent_task)
    WHERE parent_run IS NOT NULL AND finished_at IS NULL;

-- ListRuns, newest (or oldest) first by ID, by state, by event ID and by
-- event subject: each filter a seek, each page one range of an index after
-- its cursor (a workflow and a state: the range of one, the other
-- filtered). No (workflow, state, id) index: it made every run's create,
-- start and finish measurably slower (BenchmarkStoreDiamond).
CREATE INDEX batuta_runs_state ON batuta_runs (state, id);
CREATE INDEX batuta_runs_event_id ON batuta_runs (event_id, id);
CREATE INDEX batuta_runs_subject ON batuta_runs (subject, id) WHERE subject IS NOT NULL;
-- WorkflowStats reads the unfinished runs through batuta_runs_state
-- (pending and running) and the finished ones of a window through
-- batuta_runs_finished (version 1, by finish time): no index of its own, so
-- claims and completions maintain no more than these.
