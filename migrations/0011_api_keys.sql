-- API keys managed through the admin API, and the usage the load balancer meters.
--
-- `hash` is the SHA-256 of the key (hex): the key itself is shown once, when it is made, and
-- never stored. `prefix` is its first characters, shown so an operator can tell keys apart.
-- `models` is a JSON array of model names, or NULL for every model. A revoked key keeps its
-- row (its usage still names it); `revoked_at` says since when it is refused.
CREATE TABLE api_keys (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    hash                TEXT NOT NULL UNIQUE,
    prefix              TEXT NOT NULL,
    models              TEXT,
    requests_per_minute BIGINT,
    tokens_per_minute   BIGINT,
    expires_at          BIGINT,
    revoked_at          BIGINT,
    created_at          BIGINT NOT NULL
);

-- What each control-plane process forwarded, per minute (Unix ms at its start), key ('' for
-- an environment key or an open /v1), model and deployment ('' for none). Each process adds
-- its own counts every second; the others read them to hold a key's limits across processes.
CREATE TABLE usage_minutes (
    minute            BIGINT NOT NULL,
    origin            TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    model             TEXT NOT NULL,
    deployment        TEXT NOT NULL,
    requests          BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (minute, origin, key_id, model, deployment)
);
