-- Deployments: a named desired state (a model served by N replicas) that the reconciler
-- converges to and holds, the actions it takes to get there, and which nodes are its replicas.
-- `spec` is the validated deployment spec as JSON; every change of what a replica runs stores
-- the new spec under a new revision in `deployment_revisions` (kept for rollbacks).

CREATE TABLE deployments (
    name                TEXT PRIMARY KEY,
    -- Differs between two deployments that ever had the same name: action ids derive from it.
    uid                 TEXT NOT NULL,
    revision            BIGINT NOT NULL,
    spec                TEXT NOT NULL,
    replicas            BIGINT NOT NULL,
    status              TEXT NOT NULL,
    reason              TEXT,
    unsatisfiable_until BIGINT,
    -- Consecutive failed replica launches of the current revision (capacity back-off, rollouts).
    failures            BIGINT NOT NULL DEFAULT 0,
    -- When the last failed launch the counter above includes ended.
    last_failure_at     BIGINT,
    deleting            BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

CREATE TABLE deployment_revisions (
    deployment TEXT NOT NULL,
    uid        TEXT NOT NULL,
    revision   BIGINT NOT NULL,
    spec       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (uid, revision)
);

-- `id` is derived from the drift it answers (deployment, revision, replica slot, drift, node),
-- so two processes, a restart or a repeated tick that see the same drift write the same row.
CREATE TABLE deployment_actions (
    id               TEXT PRIMARY KEY,
    deployment       TEXT NOT NULL,
    uid              TEXT NOT NULL,
    revision         BIGINT NOT NULL,
    slot             BIGINT,
    kind             TEXT NOT NULL,
    drift            TEXT NOT NULL,
    risk             TEXT NOT NULL,
    state            TEXT NOT NULL,
    market           TEXT,
    reason           TEXT,
    node_id          TEXT,
    launch_job_id    TEXT,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE INDEX deployment_actions_by_deployment ON deployment_actions (deployment, created_at);
CREATE INDEX deployment_actions_by_state ON deployment_actions (state, created_at);

-- A replica knows its deployment, the revision it runs and its slot (0..replicas-1); null for
-- nodes outside any deployment.
ALTER TABLE nodes ADD COLUMN deployment TEXT;
ALTER TABLE nodes ADD COLUMN deployment_revision BIGINT;
ALTER TABLE nodes ADD COLUMN deployment_slot BIGINT;
