-- Hosts: machines the operator owns, reached over SSH, that `provider: "ssh"` launches onto.
-- `credentials` is the login (private key or password) sealed with the control plane's
-- credentials key (ChaCha20-Poly1305): the database alone does not reveal it. `host_key` is the
-- host's public key, given or learnt on first contact; a later connection presenting another
-- key is refused. `job_id` is the launch job that holds the host while it is `in_use` or
-- `teardown_pending`.

CREATE TABLE hosts (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    address              TEXT NOT NULL,
    port                 BIGINT NOT NULL,
    login                TEXT NOT NULL,
    auth_kind            TEXT NOT NULL,
    credentials          TEXT NOT NULL,
    host_key             TEXT,
    host_key_fingerprint TEXT,
    labels               TEXT NOT NULL,
    gpu_type             TEXT,
    gpu_count            BIGINT,
    status               TEXT NOT NULL,
    reason               TEXT,
    probe                TEXT,
    job_id               TEXT,
    -- Bumped by every write: a write that read an older one matches nothing.
    revision             BIGINT NOT NULL,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

CREATE TABLE host_events (
    id      {{AUTO_ID}},
    host_id TEXT NOT NULL,
    at      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    message TEXT NOT NULL
);

CREATE INDEX host_events_by_host ON host_events (host_id, id);
