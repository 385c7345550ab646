-- The autoscaler's latest decision for a deployment (from, to, reason, when; JSON): it names the
-- drift (scale_up, scale_down) of the launches and drains that follow from it.
ALTER TABLE deployments ADD COLUMN last_scale TEXT;
