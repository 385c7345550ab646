"""Schemathesis checks for skylaunch's bounded fuzz run (loaded through SCHEMATHESIS_HOOKS).

The one rule: no 5xx. The exception is the load balancer's documented 503 (`no_healthy_nodes`) when no
healthy node serves the requested model (fuzzed model names never have one). Any other 5xx,
including a 503 with another code, fails the run.
"""
import schemathesis


@schemathesis.check
def no_server_error(ctx, response, case):
    if response.status_code < 500:
        return None
    if response.status_code == 503 and case.path.startswith("/v1/"):
        try:
            code = response.json()["error"]["code"]
        except Exception:
            code = None
        if code == "no_healthy_nodes":
            return None
    raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")
