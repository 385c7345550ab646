-- Several control-plane processes may change one node (a heartbeat on one, an admin drain on
-- another). Every change of a node's row other than heartbeat telemetry bumps its revision, and
-- a writer only succeeds when the revision is still the one it read: a lost race is noticed,
-- re-read and retried instead of silently overwriting the other process's change.
ALTER TABLE nodes ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
