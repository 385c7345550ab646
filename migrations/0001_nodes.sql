-- Nodes: one VM (or host) serving one model, and the history of its status.
-- Portable SQL for SQLite and PostgreSQL; the migration runner replaces {{AUTO_ID}} with
-- each backend's auto-increment primary key. Timestamps are Unix milliseconds (BIGINT).

CREATE TABLE nodes (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    model_name        TEXT NOT NULL,
    endpoint_url      TEXT,
    provider          TEXT NOT NULL,
    region            TEXT,
    zone              TEXT,
    gpu_type          TEXT,
    gpu_count         BIGINT,
    instance_type     TEXT,
    spot_instance     BIGINT NOT NULL DEFAULT 0,
    labels            TEXT NOT NULL DEFAULT '{}',
    agent_version     TEXT,
    status            TEXT NOT NULL,
    status_reason     TEXT,
    token_hash        TEXT NOT NULL,
    launch_job_id     TEXT,
    health_score      DOUBLE PRECISION,
    last_heartbeat_at BIGINT,
    last_heartbeat    TEXT,
    registered_at     BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

-- A name is unique among the nodes that still exist.
CREATE UNIQUE INDEX nodes_live_name ON nodes (name) WHERE status <> 'terminated';

CREATE TABLE node_events (
    id          {{AUTO_ID}},
    node_id     TEXT NOT NULL REFERENCES nodes (id),
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    reason      TEXT NOT NULL
);

CREATE INDEX node_events_by_node ON node_events (node_id, id);
