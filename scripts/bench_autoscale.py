"""Driver for scripts/bench-autoscale: replays a request trace, time-compressed, through skylaunch's
load balancer to a deployment on the local provider, once per scaling policy, and compares the
replica-hours each used with the time to first token its requests saw.

The model-server stand-in is skylaunch's echo server with its vLLM-like service model
(src/echo_server.rs): a request's prompt tokens are its words, its output tokens its
`max_tokens`; at most K sequences run at once per replica and the rest wait in a first-come
queue; a running sequence's first token comes after PREFILL per prompt token, each further one
after DECODE; batching is free. The queue is published as vLLM's `vllm:num_requests_running` /
`vllm:num_requests_waiting`, which the agent reports (the `queue` metric). A new replica listens
only after a cold start. Every duration (service times, cold start, autoscale delays) is divided
by the speedup, so the replay is the trace's hour played faster; every figure printed is in trace
time (wall seconds x speedup) unless it says wall.

Each request is streamed (`stream: true`) over keep-alive connections; its time to first token
is from its due time (its arrival in the trace, compressed; a request sent late counts from when
it was due) to the first `data:` chunk. A request that fails, times out, or is not sent because
the driver already has `--max-open` requests open, counts as failed, and as infinitely slow in
the percentiles and the share over the SLO.

Replica-hours integrate the deployment's live replicas (its nodes in GET
/admin/deployments/<name> that are not terminated, polled every 0.25 s: launching, starting
(`unhealthy` while the model server loads), ready, draining) over the replay window, in trace
hours. Draining replicas count: their VMs are still billed.

Talks only to the loopback URL it is given. Prints figures; no timing is a check.
"""
import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import threading
import time

from bench_common import Pool, fmt_s, load_trace, machine_busy, post_stream, q, request_json, wait_for

POLICIES = ["fixed", "rps", "in_flight", "queue", "ttft"]
sys.stdout.reconfigure(line_buffering=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="the control plane (loopback only)")
    p.add_argument("--token", help="its admin token")
    p.add_argument("--trace", help="CSV: arrival timestamp, prompt tokens, generated tokens")
    p.add_argument("--speedup", type=float, default=30.0, help="trace seconds per wall second (default 30)")
    p.add_argument("--start-minute", type=float, default=0.0, help="where the slice starts, in trace minutes from the first arrival")
    p.add_argument("--minutes", type=float, default=None, help="the slice's length in trace minutes (default: to the end)")
    p.add_argument("--policies", default=",".join(POLICIES),
                   help=f"comma-separated, from {','.join(POLICIES)}; POLICY@TARGET sets a target in trace units "
                        "(rps: requests/s per replica; in_flight, queue: per replica; ttft: seconds; fixed: replicas)")
    p.add_argument("--prefill-ms", type=float, default=0.25, help="trace ms of prefill per prompt token (default 0.25)")
    p.add_argument("--decode-ms", type=float, default=30.0, help="trace ms per output token after the first (default 30)")
    p.add_argument("--max-seqs", type=int, default=8, help="sequences a replica runs at once, K (default 8)")
    p.add_argument("--cold-start-s", type=float, default=180.0, help="trace seconds before a new replica's model server listens (default 180)")
    p.add_argument("--utilization", type=float, default=0.75, help="share of a replica's K slots the sizing and the targets aim at (default 0.75)")
    p.add_argument("--slo-s", type=float, default=2.0, help="time-to-first-token SLO in trace seconds (default 2)")
    p.add_argument("--queue-target", type=float, default=1.0, help="`queue` target: requests waiting per ready replica (default 1)")
    p.add_argument("--ttft-target-s", type=float, default=1.0, help="`ttft` target in trace seconds (default 1, half the SLO)")
    p.add_argument("--scale-up-delay-s", type=float, default=30.0, help="trace seconds (default 30; rounded to whole wall seconds, at least 1)")
    p.add_argument("--scale-down-delay-s", type=float, default=300.0, help="trace seconds (default 300)")
    p.add_argument("--window-s", type=float, default=60.0, help="trace seconds each metric is averaged over (default 60, the policy's default)")
    p.add_argument("--max-open", type=int, default=300, help="open requests at most; an arrival beyond it is not sent and counts as failed (default 300)")
    p.add_argument("--request-timeout-s", type=float, default=600.0, help="trace seconds a request may take before it counts as failed (default 600)")
    a = p.parse_args()
    if not (a.url and a.token and a.trace):
        p.error("--url, --token and --trace are needed (scripts/bench-autoscale passes them)")
    assert a.url.startswith("http://127.0.0.1:"), "loopback only"
    a.policies = [x.strip() for x in a.policies.split(",") if x.strip()]
    for x in a.policies:
        name, _, target = x.partition("@")
        if name not in POLICIES:
            p.error(f"unknown policy {name}; known: {', '.join(POLICIES)}")
        try:
            if target and not float(target) > 0:
                raise ValueError
        except ValueError:
            p.error(f"{x}: the target after @ is a number above 0")
    return a


ARGS = parse_args()
S = ARGS.speedup
HOST, PORT = "127.0.0.1", int(ARGS.url.rsplit(":", 1)[1])


def http(method, path, body=None, timeout=30):
    return request_json(ARGS.url, method, path, body, timeout, ARGS.token)


# ---------------------------------------------------------------------------------------------
# The load: one asyncio loop, keep-alive connections to the load balancer


async def one_request(pool, model, prompt, out_tokens, due, loop):
    """Returns (first data time, error or None)."""
    body = json.dumps({"model": model, "stream": True, "max_tokens": out_tokens,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    res = await post_stream(pool, body, None, loop)
    return (None, res["error"]) if res["error"] else (res["first"], None)


PROMPTS = {}
RUNS = []


def prompt_of(tokens):
    text = PROMPTS.get(tokens)
    if text is None:
        text = PROMPTS[tokens] = ("t " * tokens).strip()
    return text


async def replay(requests, model):
    """Sends every request at its due time; returns per-request results and timing facts."""
    loop = asyncio.get_running_loop()
    pool = Pool(HOST, PORT)
    results = [None] * len(requests)
    lags = []
    open_now = 0
    peak_open = 0
    timeout = ARGS.request_timeout_s / S
    tasks = []

    async def run(i, due, p, g):
        nonlocal open_now
        try:
            first, error = await asyncio.wait_for(one_request(pool, model, prompt_of(p), g, due, loop), timeout)
        except asyncio.TimeoutError:
            first, error = None, "timeout"
        open_now -= 1
        results[i] = (None, error) if error else ((first - due) * S, None)

    t0 = loop.time() + 0.5
    for i, (at, p, g) in enumerate(requests):
        due = t0 + at / S
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(loop.time() - due)
        if open_now >= ARGS.max_open:
            results[i] = (None, "not sent: --max-open requests already open")
            continue
        open_now += 1
        peak_open = max(peak_open, open_now)
        tasks.append(asyncio.ensure_future(run(i, due, p, g)))
    end_of_slice = t0 + requests[-1][0] / S if requests else t0
    if tasks:
        await asyncio.wait(tasks)
    pool.close()
    return {"results": results, "t0": t0, "end": end_of_slice, "lags": lags, "peak_open": peak_open, "loop": loop}


# ---------------------------------------------------------------------------------------------
# Watching the deployment


class Watcher(threading.Thread):
    """Polls the deployment's view every 0.25 s: live replicas over time, each node's first
    sighting and first time ready, the autoscaler's decisions."""

    def __init__(self, name, clock):
        super().__init__(daemon=True)
        self.name_, self.clock = name, clock
        self.samples = []  # (t, ready, launching, draining, desired, value)
        self.nodes = {}  # node id -> {"seen": t, "ready": t}
        self.decisions = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                status, d = http("GET", f"/admin/deployments/{self.name_}", timeout=5)
            except Exception:  # noqa: BLE001 - a missed sample is fine
                status, d = 0, None
            t = self.clock()
            if status == 200:
                r = d["replicas"]
                a = d.get("autoscale") or {}
                # A replica whose model server is still starting is `unhealthy`, which
                # `replicas` counts nowhere: count the live nodes themselves.
                nodes = [n for n in d.get("nodes", []) if n["status"] != "terminated"]
                ready = sum(1 for n in nodes if n["status"] == "ready")
                leaving = sum(1 for n in nodes if n["status"] in ("draining", "teardown_pending"))
                self.samples.append((t, ready, len(nodes) - ready - leaving, leaving, r["desired"], a.get("value")))
                for n in d.get("nodes", []):
                    seen = self.nodes.setdefault(n["node_id"], {"seen": t})
                    if n["status"] == "ready":
                        seen.setdefault("ready", t)
                last = a.get("last_decision")
                if last:
                    self.decisions[str(last.get("at"))] = (last["from"], last["to"], last.get("reason", ""))
            self.stop.wait(0.25)

    def live_integral(self, start, end):
        """Replica-seconds (wall) of live replicas between start and end (step function)."""
        total = 0.0
        pts = self.samples
        for (t, ready, launching, draining, *_), nxt in zip(pts, pts[1:] + [None]):
            t_next = nxt[0] if nxt else end
            a, b = max(t, start), min(t_next, end)
            if b > a:
                total += (ready + launching + draining) * (b - a)
        return total

    def max_live(self, start, end):
        return max((s[1] + s[2] + s[3] for s in self.samples if start <= s[0] <= end), default=0)


# ---------------------------------------------------------------------------------------------
# One run


def envs():
    return {"ECHO_PREFILL_US_PER_TOKEN": f"{ARGS.prefill_ms * 1000 / S:.4f}",
         "ECHO_DECODE_US_PER_TOKEN": f"{ARGS.decode_ms * 1000 / S:.4f}",
         "ECHO_MAX_SEQS": str(ARGS.max_seqs),
         "ECHO_STARTUP_DELAY_MS": str(round(ARGS.cold_start_s * 1000 / S))}


def wall_delay(trace_s):
    return max(1, round(trace_s / S))


def run_policy(label, requests, plan):
    policy, _, given = label.partition("@")
    name = f"as-{policy.replace('_', '-')}-{len(RUNS)}"
    RUNS.append(label)
    model = f"bench/{name}"
    spec = {"name": name, "model": model, "provider": "local", "envs": envs()}
    if policy == "fixed":
        spec["replicas"] = int(float(given)) if given else plan["fixed"]
        target = f"{spec['replicas']} replicas"
    else:
        metric = policy
        target_wall = plan["targets"][policy](float(given)) if given else plan["targets"][policy]()
        spec["replicas"] = plan["initial"]
        spec["autoscale"] = {"min_replicas": 1, "max_replicas": plan["max"], "metric": metric,
                             "target": target_wall, "scale_up_delay_s": wall_delay(ARGS.scale_up_delay_s),
                             "scale_down_delay_s": wall_delay(ARGS.scale_down_delay_s),
                             "window_s": wall_delay(ARGS.window_s)}
        target = plan["target_text"][policy](target_wall)
    print(f"== {label}: {target}, starting at {spec['replicas']} replicas ==")
    status, body = http("POST", "/admin/deployments", spec)
    assert status == 201, (status, body)
    t_create = time.time()
    wait_for("bench-autoscale", f"{name}: {spec['replicas']} ready replicas",
             lambda: (lambda d: d["replicas"]["ready"] == spec["replicas"])(http("GET", f"/admin/deployments/{name}")[1]),
             300)
    print(f"  {spec['replicas']} replicas ready {time.time() - t_create:.1f} s (wall) after the create")
    time.sleep(1.0)  # every process's routing table has them

    loop = asyncio.new_event_loop()
    watcher = Watcher(name, loop.time)
    watcher.start()
    busy0 = machine_busy()
    try:
        out = loop.run_until_complete(replay(requests, model))
    finally:
        watcher.stop.set()
        watcher.join()
        loop.close()
    busy1 = machine_busy()
    machine = (busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1])
    t0, end = out["t0"], out["end"]
    replica_s = watcher.live_integral(t0, end)
    results = out["results"]
    ttfts = sorted(r[0] if r[1] is None else math.inf for r in results)
    failed = [r[1] for r in results if r[1] is not None]
    over = sum(1 for v in ttfts if v > ARGS.slo_s)
    # Cold starts seen: from a node's first sighting to ready, for nodes that appeared during the run.
    colds = sorted((n["ready"] - n["seen"]) * S for n in watcher.nodes.values() if "ready" in n and n["seen"] > t0 + 0.3)
    status, actions = http("GET", f"/admin/deployments/{name}/actions")
    acts = actions.get("actions", []) if isinstance(actions, dict) else []
    ups = sum(1 for a in acts if a.get("drift") == "scale_up" and a.get("kind") == "launch_replica")
    downs = sum(1 for a in acts if a.get("drift") == "scale_down" and a.get("kind") == "drain_replica")
    lags = sorted(out["lags"])
    row = {
        "policy": label, "target": target, "machine": machine,
        "replica_hours": replica_s * S / 3600, "mean_replicas": replica_s / (end - t0) if end > t0 else math.nan,
        "max_replicas": watcher.max_live(t0, end),
        "p50": q(ttfts, 0.50), "p99": q(ttfts, 0.99), "over_slo": over / len(ttfts) if ttfts else math.nan,
        "failed": len(failed), "requests": len(results), "ups": ups, "downs": downs,
        "decisions": len(watcher.decisions), "cold_median": statistics.median(colds) if colds else math.nan,
        "lag_p99_ms": q(lags, 0.99) * 1000, "peak_open": out["peak_open"],
    }
    print(f"  replayed {len(results)} requests in {end - t0:.1f} s (wall); peak {out['peak_open']} open; "
          f"dispatch lag p99 {row['lag_p99_ms']:.1f} ms wall ({row['lag_p99_ms'] * S / 1000:.2f} s trace); "
          f"the machine's CPUs {machine:.0%} busy (all processes, others' included)")
    print(f"  replica-hours {row['replica_hours']:.2f} (mean {row['mean_replicas']:.2f} replicas, max {row['max_replicas']}); "
          f"TTFT p50 {fmt_s(row['p50'])}, p99 {fmt_s(row['p99'])}; over the {ARGS.slo_s:g} s SLO {row['over_slo']:.1%}; "
          f"failed {len(failed)}")
    if failed:
        kinds = {}
        for f in failed:
            kinds[f] = kinds.get(f, 0) + 1
        print(f"  failures: {kinds}")
    if policy != "fixed":
        print(f"  scale-up launches {ups}, scale-down drains {downs} ({len(watcher.decisions)} decisions seen)")
        for at, (a, b, reason) in sorted(watcher.decisions.items())[:3]:
            print(f"    e.g. {a} -> {b}: {reason}")
    if colds:
        print(f"  replicas launched during the run: {len(colds)}, first sighting -> ready median {statistics.median(colds):.0f} s trace "
              f"({statistics.median(colds) / S:.1f} s wall; the echo server's startup delay is {ARGS.cold_start_s:g} s trace)")
    # A timeline, every 5 trace minutes: live replicas and the metric's value.
    line = []
    step = 300 / S
    t = t0
    while t < end:
        pts = [s for s in watcher.samples if t <= s[0] < t + step]
        if pts:
            live = statistics.mean(s[1] + s[2] + s[3] for s in pts)
            line.append(f"{live:.1f}")
        t += step
    print(f"  live replicas per 5 trace minutes: {' '.join(line)}")

    row["timeline"] = line
    status, _ = http("DELETE", f"/admin/deployments/{name}")
    assert status == 202, status
    wait_for("bench-autoscale", f"{name} deleted", lambda: http("GET", f"/admin/deployments/{name}")[0] == 404, 300)
    return row


# ---------------------------------------------------------------------------------------------


def main():
    trace = load_trace(ARGS.trace)
    start = ARGS.start_minute * 60
    stop = start + ARGS.minutes * 60 if ARGS.minutes else math.inf
    requests = [(t - start, p, g) for t, p, g in trace if start <= t < stop]
    if not requests:
        raise SystemExit("bench-autoscale: no request in the slice")
    span = requests[-1][0]
    K = ARGS.max_seqs
    svc = [ARGS.prefill_ms / 1000 * p + ARGS.decode_ms / 1000 * (g - 1) for _, p, g in requests]
    mean_svc = statistics.mean(svc)
    # Busy slots per trace minute (sequence-seconds / 60): the work, whatever the request count.
    minutes = int(span // 60) + 1
    busy = [0.0] * minutes
    count = [0] * minutes
    for (t, _, _), s in zip(requests, svc):
        busy[int(t // 60)] += s / 60
        count[int(t // 60)] += 1
    full = busy[:-1] if len(busy) > 1 and span % 60 < 30 else busy  # a last partial minute is not a peak
    per_replica = K * ARGS.utilization
    fixed = math.ceil(max(full) / per_replica)
    first5 = sum(busy[:5]) / max(1, min(5, len(busy)))
    initial = max(1, min(fixed, math.ceil(first5 / per_replica)))
    capacity_rps = K / mean_svc
    rps_target = ARGS.utilization * capacity_rps
    # Targets in the autoscaler's units (wall time for rps and ttft), from a trace-unit value.
    plan = {
        "fixed": fixed, "initial": initial, "max": 2 * fixed,
        "targets": {"rps": lambda v=rps_target: v * S, "in_flight": lambda v=per_replica: v,
                    "queue": lambda v=ARGS.queue_target: v, "ttft": lambda v=ARGS.ttft_target_s: v / S},
        "target_text": {"rps": lambda w: f"{w / S:.3f} requests/s per replica ({w / (S * capacity_rps):.0%} of capacity; {w:.2f}/s wall)",
                        "in_flight": lambda w: f"{w:g} in flight per replica ({w / K:.0%} of K)",
                        "queue": lambda w: f"{w:g} waiting per replica",
                        "ttft": lambda w: f"{w * S:g} s ({w * 1000:.1f} ms wall)"},
    }
    wall = span / S
    print(f"# trace {ARGS.trace}: {len(trace)} requests over {trace[-1][0] / 60:.1f} min; slice minutes "
          f"{ARGS.start_minute:g} to {ARGS.start_minute + span / 60:.1f}: {len(requests)} requests, "
          f"replayed at {S:g}x in {wall:.0f} s per policy")
    print(f"# {os.cpu_count()} cores, {open('/proc/cpuinfo').read().split('model name')[1].split(':', 1)[1].splitlines()[0].strip()}")
    print(f"# service model (trace time): prefill {ARGS.prefill_ms:g} ms/prompt token, decode {ARGS.decode_ms:g} ms/output token, "
          f"K = {K} sequences per replica, cold start {ARGS.cold_start_s:g} s; echo knobs {envs()}")
    print(f"# mean request: {statistics.mean(p for _, p, _ in requests):.0f} prompt + {statistics.mean(g for _, _, g in requests):.0f} "
          f"output tokens, {mean_svc:.2f} s of a slot; a replica does {capacity_rps:.3f} requests/s at 100 % of its slots")
    print(f"# work per trace minute, in replicas at 100 %: min {min(full) / K:.1f}, mean {statistics.mean(full) / K:.1f}, "
          f"max {max(full) / K:.1f}; requests per minute: min {min(count[:len(full)])}, max {max(count[:len(full)])}")
    print(f"# sizing at {ARGS.utilization:.0%} of the slots ({per_replica:g} sequences per replica): fixed = {fixed} replicas "
          f"(the busiest minute); autoscaled runs start at {initial} (the first 5 minutes), min 1, max {2 * fixed}; "
          f"delays up {ARGS.scale_up_delay_s:g} s / down {ARGS.scale_down_delay_s:g} s trace = "
          f"{wall_delay(ARGS.scale_up_delay_s)} / {wall_delay(ARGS.scale_down_delay_s)} s wall; "
          f"window {ARGS.window_s:g} s trace = {wall_delay(ARGS.window_s)} s wall")
    print(f"# SLO: time to first token <= {ARGS.slo_s:g} s (trace); a failed request counts as over it and as infinite in the percentiles")
    print(f"# server: reconcile interval {os.environ.get('SKYLAUNCH_RECONCILE_INTERVAL', '?')}, heartbeat interval "
          f"{os.environ.get('SKYLAUNCH_HEARTBEAT_INTERVAL', '?')} (wall)")
    rows = []
    t_all = time.time()
    for policy in ARGS.policies:
        rows.append(run_policy(policy, requests, plan))
    print()
    print(f"## Results ({len(requests)} requests, {span / 60:.1f} trace minutes at {S:g}x; times in trace seconds; "
          f"SLO: TTFT <= {ARGS.slo_s:g} s; took {(time.time() - t_all) / 60:.1f} min wall)")
    print()
    rps_rh = next((r["replica_hours"] for r in rows if r["policy"] == "rps"), None)
    print("| Policy | Target | Replica-hours | vs rps | Mean / max replicas | TTFT p50 | TTFT p99 | Over SLO | Failed | Scale-ups / downs | Machine busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sc = "" if r["policy"].startswith("fixed") else f"{r['ups']} / {r['downs']}"
        vs = f"{r['replica_hours'] / rps_rh - 1:+.0%}" if rps_rh else ""
        print(f"| {r['policy']} | {r['target']} | {r['replica_hours']:.2f} | {vs} | {r['mean_replicas']:.2f} / {r['max_replicas']} | "
              f"{fmt_s(r['p50'])} | {fmt_s(r['p99'])} | {r['over_slo']:.2%} | {r['failed']} of {r['requests']} | {sc} | {r['machine']:.0%} |")
    print()
    print("Live replicas, mean per 5 trace minutes:")
    for r in rows:
        print(f"  {r['policy']:>16}: {' '.join(r['timeline'])}")
    by = {r["policy"]: r for r in rows}
    if "rps" in by:
        rps = by["rps"]
        ours = [r for r in rows if r["policy"].split("@")[0] in ("in_flight", "queue", "ttft")
                and r["p99"] <= rps["p99"]]
        print()
        if ours:
            best = min(ours, key=lambda r: r["replica_hours"])
            saved = 1 - best["replica_hours"] / rps["replica_hours"]
            print(f"Best of ours at the same or better p99 TTFT than rps ({fmt_s(rps['p99'])}): {best['policy']}, "
                  f"{best['replica_hours']:.2f} replica-hours against {rps['replica_hours']:.2f}: "
                  f"{f'{saved:.0%} fewer' if saved >= 0 else f'{-saved:.0%} more'} "
                  f"(goal: at least 25 % fewer) -> {'met' if saved >= 0.25 else 'not met'}")
        else:
            print(f"None of ours reached rps's p99 TTFT ({fmt_s(rps['p99'])}): goal not met")


main()
