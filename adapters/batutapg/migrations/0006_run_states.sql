-- batuta Store schema, version 6: finishing a run is a HOT update again.
--
-- Version 5 indexed runs.state and runs.finished_at (runs_state,
-- runs_finished) for listing by state and statistics. An update that
-- changes an indexed column cannot be HOT, so the update finishing a run
-- added an entry to every index of runs (the primary key, the dedupe key,
-- runs_created_at, runs_workflow, runs_event, ...) and wrote a new row
-- version, often on another page. Those two indexes move to a narrow side
-- table, run_states, which mirrors each run's workflow, state, creation and
-- finish time; runs again indexes only columns that do not change once the
-- run is created, so every update of a run is HOT.
--
-- The store's statements keep run_states in the statement that changes the
-- run: creating runs inserts their rows, the completion and cancel
-- statements update the rows of the runs they finish, RetryRun the row of
-- the run it reopens, and Prune deletes the rows of the runs it deletes.
-- Its own update at a finish is not HOT (it changes the indexed columns)
-- but touches three small indexes. (Triggers on runs would keep it too,
-- but a row-level trigger measured about 10 us of server CPU per finished
-- run more than the statements do.)
CREATE TABLE run_states (
    run_id      uuid PRIMARY KEY,
    workflow    text COLLATE "C" NOT NULL,
    state       text NOT NULL,
    created_at  timestamptz NOT NULL,
    finished_at timestamptz
);

INSERT INTO run_states (run_id, workflow, state, created_at, finished_at)
SELECT id, workflow, state, created_at, finished_at FROM runs;

DROP INDEX runs_state;
DROP INDEX runs_finished;

-- Listing by state in run ID order (keyset pagination), and the unfinished
-- runs for statistics: succeeded runs, the dense state, are left out (a
-- listing of them walks the primary key of runs and finds them at once).
CREATE INDEX run_states_state ON run_states (state, run_id) WHERE state <> 'succeeded';
-- The runs finished in a time window, index only.
CREATE INDEX run_states_finished ON run_states (finished_at) INCLUDE (workflow, state, created_at)
    WHERE finished_at IS NOT NULL;
