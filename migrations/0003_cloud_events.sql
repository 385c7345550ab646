-- What the orphan sweeper did on each cloud: instances it terminated because no launch accounted
-- for them, and nodes whose instance vanished outside skylaunch. Never rewritten, only appended.

CREATE TABLE cloud_events (
    id          {{AUTO_ID}},
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    cloud       TEXT NOT NULL,
    region      TEXT,
    instance_id TEXT NOT NULL,
    job_id      TEXT,
    node_id     TEXT,
    message     TEXT NOT NULL
);

CREATE INDEX cloud_events_by_id ON cloud_events (id);
