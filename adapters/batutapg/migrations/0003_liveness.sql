-- batuta Store schema, version 3: instance liveness, recoverable claims,
-- recognisable repeated completions.

-- One row per claiming owner (an orchestrator's NodeID), renewed by its
-- Store every Config.LivenessInterval with the database's clock. The
-- leases of an owner whose row is older than Config.LivenessTimeout are
-- void: its tasks are rescued without waiting for their lease to expire.
CREATE TABLE instances (
    owner   text COLLATE "C" PRIMARY KEY,
    seen_at timestamptz NOT NULL
);

-- The claim request that leased a running task: when a claim's reply is
-- lost, the Store releases what that request took (no rescue counted).
ALTER TABLE tasks ADD COLUMN claim_req bigint;

-- The token and outcome of the last completion applied to the task, so
-- that a non-terminal completion (retry, snooze, release) re-sent after
-- its reply was lost is recognised as its own.
ALTER TABLE tasks ADD COLUMN last_token bigint;
ALTER TABLE tasks ADD COLUMN last_outcome text;
