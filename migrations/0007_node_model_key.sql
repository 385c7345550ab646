-- The model server's own API key (vLLM's `--api-key`), minted with each launch's node token. The
-- load balancer sends it on every forwarded request, from whichever process serves the request,
-- so it is kept here; no API answer shows it. Nodes made before this have none.
ALTER TABLE nodes ADD COLUMN model_key TEXT;
