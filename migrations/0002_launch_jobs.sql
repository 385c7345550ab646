-- Launch jobs: one request to bring up a node, its stages, placements tried, outcome and output.
-- `stages`, `attempts`, `error`, `spec` and `provider_state` are JSON documents owned by the job
-- runner; they are rewritten whole on each change (a job has a handful of each).

CREATE TABLE launch_jobs (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    status           TEXT NOT NULL,
    stage            TEXT,
    provider         TEXT NOT NULL,
    request          TEXT NOT NULL,
    spec             TEXT NOT NULL,
    stages           TEXT NOT NULL,
    attempts         TEXT NOT NULL,
    error            TEXT,
    node_id          TEXT,
    task_yaml        TEXT,
    cluster_name     TEXT NOT NULL,
    provider_state   TEXT NOT NULL DEFAULT '{}',
    idempotency_key  TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    claims           BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    finished_at      BIGINT
);

CREATE UNIQUE INDEX launch_jobs_idempotency ON launch_jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX launch_jobs_by_status ON launch_jobs (status, created_at);

CREATE TABLE launch_job_logs (
    id     {{AUTO_ID}},
    job_id TEXT NOT NULL REFERENCES launch_jobs (id),
    at     BIGINT NOT NULL,
    stream TEXT NOT NULL,
    line   TEXT NOT NULL
);

CREATE INDEX launch_job_logs_by_job ON launch_job_logs (job_id, id);
