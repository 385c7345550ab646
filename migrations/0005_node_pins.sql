-- What a node's agent may not change when it registers, fixed when the node is made: an endpoint
-- the admin set, and whether the node lives on this machine (the local provider, whose model
-- servers listen on loopback). A node token can be stolen from a VM; these keep it from
-- redirecting traffic.
ALTER TABLE nodes ADD COLUMN endpoint_pinned BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN on_this_host BIGINT NOT NULL DEFAULT 0;
UPDATE nodes SET endpoint_pinned = 1 WHERE endpoint_url IS NOT NULL AND registered_at IS NULL;
UPDATE nodes SET on_this_host = 1 WHERE provider = 'local' AND launch_job_id IS NOT NULL;
