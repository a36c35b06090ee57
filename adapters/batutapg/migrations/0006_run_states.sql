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
-- run_states is kept by triggers on runs, in the statement that changes
-- the run (runs stays the only thing the store's statements write): one
-- statement-level insert per batch of new runs, one row-level update when
-- a run's state or finish time changes (it finishes, RetryRun reopens it;
-- the updates a run gets while its tasks finish fire nothing), one
-- statement-level delete per Prune batch. Its own update at a finish is not
-- HOT (it changes the indexed columns) but touches three small indexes.
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

-- The trigger functions name the tables with this schema (current_schema(),
-- the search_path the migration runs with), not through the search_path of
-- the session that fires them.
DO $do$
BEGIN
    EXECUTE format($f$
CREATE FUNCTION %1$I.run_states_insert() RETURNS trigger LANGUAGE plpgsql AS $b$
BEGIN
    INSERT INTO %1$I.run_states (run_id, workflow, state, created_at, finished_at)
    SELECT id, workflow, state, created_at, finished_at FROM new_runs;
    RETURN NULL;
END
$b$$f$, current_schema());
    EXECUTE format($f$
CREATE FUNCTION %1$I.run_states_update() RETURNS trigger LANGUAGE plpgsql AS $b$
BEGIN
    UPDATE %1$I.run_states SET state = NEW.state, finished_at = NEW.finished_at WHERE run_id = NEW.id;
    RETURN NULL;
END
$b$$f$, current_schema());
    EXECUTE format($f$
CREATE FUNCTION %1$I.run_states_delete() RETURNS trigger LANGUAGE plpgsql AS $b$
BEGIN
    DELETE FROM %1$I.run_states s USING old_runs o WHERE s.run_id = o.id;
    RETURN NULL;
END
$b$$f$, current_schema());
END
$do$;

CREATE TRIGGER run_states_insert AFTER INSERT ON runs
    REFERENCING NEW TABLE AS new_runs FOR EACH STATEMENT EXECUTE FUNCTION run_states_insert();
CREATE TRIGGER run_states_update AFTER UPDATE OF state, finished_at ON runs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.finished_at IS DISTINCT FROM NEW.finished_at)
    EXECUTE FUNCTION run_states_update();
CREATE TRIGGER run_states_delete AFTER DELETE ON runs
    REFERENCING OLD TABLE AS old_runs FOR EACH STATEMENT EXECUTE FUNCTION run_states_delete();
