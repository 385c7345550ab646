"""Driver for scripts/bench-routing: replays synthetic multi-turn conversations, time-compressed,
through skylaunch's load balancer to a deployment of echo replicas with a prefix cache, once per
routing policy, and compares the prefix-cache hit rate, the time to first token and the spread
of requests over the replicas.

The model-server stand-in is skylaunch's echo server (src/echo_server/) with its vLLM-like
service model: a request's prompt tokens are its messages' words, its output tokens its
`max_tokens`; at most K sequences run at once per replica and the rest queue; a running
sequence's first token comes after PREFILL per uncached prompt token, each further one after
DECODE. Its prefix cache (`ECHO_PREFIX_CACHE_TOKENS`) keeps the prompts' 16-token blocks,
chained-hashed, least recently used evicted first; a request's leading blocks found there cost
no prefill. Each replica publishes vLLM v1's `vllm:prefix_cache_queries_total` and
`vllm:prefix_cache_hits_total`; the hit rate printed is the sum of the hits over the sum of the
queries of every replica, after the run less before it.

The workload: S system prompts of a few hundred words. Conversations start at the trace's
arrival times (every Nth arrival, N chosen so the planned work fills --load of the replicas'
slots; compressed by the speedup); each picks a system prompt and has 1 to 8 turns. A turn's
request is the system prompt, the whole history so far and a new user message; the user
message's words are the trace row's prompt tokens x --user-scale (capped), its `max_tokens` the
row's generated tokens (capped); the first turn takes the arrival's own row, the later ones
rows drawn from the slice. A conversation's next turn comes a think time (exponential, trace
seconds) after the previous answer ended. The assistant's messages in the history are what the
echo server answered, read from the stream, so the replayed prefix is exact. For the `session`
policy each request carries the conversation's id in the session header. The plan is the same
for every policy (one seed); every deployment starts with cold caches.

Each request is streamed (`stream: true`, `stream_options.include_usage`); its time to first
token is from its due time (the conversation's arrival, or the previous answer's end plus the
think time) to the first `data:` chunk, in trace seconds (wall x speedup). A failed request ends
its conversation; the turns it did not send count as failed too. A request's replica is its
answer's `X-Skylaunch-Node` header.

Talks only to the loopback URL it is given and to the replicas' ports on 127.0.0.1. Prints
figures; no timing is a check.
"""
import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import time

from bench_common import Pool, fmt_s, load_trace, machine_busy, post_stream, q, request_json, wait_for

POLICIES = ["least_load", "prefix_affinity", "session"]
BLOCK = 16  # the echo server's prefix-cache block, in tokens
sys.stdout.reconfigure(line_buffering=True)


def span_arg(text):
    lo, _, hi = text.partition("-")
    lo, hi = int(lo), int(hi or lo)
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text}: MIN-MAX with 1 <= MIN <= MAX")
    return lo, hi


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Every duration is in trace time unless it says wall.")
    p.add_argument("--url", help="the control plane (loopback only)")
    p.add_argument("--token", help="its admin token")
    p.add_argument("--trace", help="CSV: arrival timestamp, prompt tokens, generated tokens")
    p.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, from {','.join(POLICIES)} (default all)")
    p.add_argument("--routing-options", default="{}",
                   help='JSON of extra `routing` settings per policy, e.g. \'{"prefix_affinity": {"min_prefix_chars": 512}}\'')
    p.add_argument("--session-header", default="X-Session-Id", help="the session policy's header (default X-Session-Id)")
    p.add_argument("--replicas", type=int, default=4, help="replicas of every deployment (default 4)")
    p.add_argument("--speedup", type=float, default=10.0, help="trace seconds per wall second (default 10)")
    p.add_argument("--start-minute", type=float, default=0.0, help="where the slice of arrivals starts, in trace minutes")
    p.add_argument("--minutes", type=float, default=10.0, help="trace minutes of conversation arrivals (default 10; "
                   "the conversations started in them run to their end)")
    p.add_argument("--load", type=float, default=0.6, help="share of the replicas' slots the planned work fills, "
                   "without any cache hit (default 0.6); sets --every")
    p.add_argument("--every", type=int, default=None, help="start a conversation at every Nth arrival of the slice (default: from --load)")
    p.add_argument("--conversations", type=int, default=None, help="conversations at most (default: all the slice gives)")
    p.add_argument("--turns", type=span_arg, default=(1, 8), help="turns per conversation, MIN-MAX, uniform (default 1-8)")
    p.add_argument("--system-prompts", type=int, default=16, help="distinct system prompts (default 16)")
    p.add_argument("--system-words", type=span_arg, default=(200, 400), help="words per system prompt, MIN-MAX (default 200-400)")
    p.add_argument("--system-skew", type=float, default=0.0,
                   help="Zipf exponent of the system prompts' popularity (default 0: uniform)")
    p.add_argument("--user-scale", type=float, default=0.1, help="user message words per trace prompt token (default 0.1)")
    p.add_argument("--user-max", type=int, default=200, help="user message words at most (default 200)")
    p.add_argument("--answer-max", type=int, default=256, help="max_tokens at most (default 256; the trace's generated tokens below it)")
    p.add_argument("--think-s", type=float, default=20.0, help="mean think time between an answer and the next turn, "
                   "exponential, within 2 s and 6x the mean (default 20)")
    p.add_argument("--prefill-ms", type=float, default=0.25, help="ms of prefill per uncached prompt token (default 0.25)")
    p.add_argument("--decode-ms", type=float, default=30.0, help="ms per output token after the first (default 30)")
    p.add_argument("--max-seqs", type=int, default=8, help="sequences a replica runs at once, K (default 8)")
    p.add_argument("--cache-tokens", type=int, default=16384, help="each replica's prefix cache, in tokens (default 16384: "
                   "1024 blocks, below the working set; see the working set printed)")
    p.add_argument("--request-timeout-s", type=float, default=600.0, help="a request taking longer fails (default 600)")
    p.add_argument("--seed", type=int, default=1, help="the plan's random seed (default 1)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop (no server needed)")
    a = p.parse_args()
    if not a.trace or not (a.dry_run or (a.url and a.token)):
        p.error("--url, --token and --trace are needed (scripts/bench-routing passes them)")
    a.url = a.url or "http://127.0.0.1:0"
    assert a.url.startswith("http://127.0.0.1:"), "loopback only"
    a.policies = [x.strip() for x in a.policies.split(",") if x.strip()]
    for x in a.policies:
        if x not in POLICIES:
            p.error(f"unknown policy {x}; known: {', '.join(POLICIES)}")
    try:
        a.routing_options = json.loads(a.routing_options)
        assert isinstance(a.routing_options, dict) and all(isinstance(v, dict) for v in a.routing_options.values())
    except (ValueError, AssertionError):
        p.error("--routing-options: a JSON object of objects, keyed by policy")
    for name, value in [("--replicas", a.replicas), ("--max-seqs", a.max_seqs), ("--system-prompts", a.system_prompts),
                        ("--user-max", a.user_max), ("--answer-max", a.answer_max)]:
        if value < 1:
            p.error(f"{name} is at least 1")
    if not (a.speedup > 0 and a.load > 0 and a.think_s >= 0 and a.minutes > 0):
        p.error("--speedup, --load and --minutes are above 0, --think-s at least 0")
    return a


ARGS = parse_args()
S = ARGS.speedup
HOST, PORT = "127.0.0.1", int(ARGS.url.rsplit(":", 1)[1])


def http(method, path, body=None, timeout=30, url=None, token=True):
    return request_json(url or ARGS.url, method, path, body, timeout, ARGS.token if token else None)


# ---------------------------------------------------------------------------------------------
# The plan: system prompts, conversations, turns (the same for every policy)


def vocabulary(rng, n=2048):
    """Short pseudo-words, distinct."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))))
    return sorted(words)


def plan(requests):
    rng = random.Random(ARGS.seed)
    vocab = vocabulary(rng)
    systems = [" ".join(rng.choice(vocab) for _ in range(rng.randint(*ARGS.system_words))) for _ in range(ARGS.system_prompts)]
    weights = [1 / (k + 1) ** ARGS.system_skew for k in range(ARGS.system_prompts)]

    def turn_of(row):
        _, p, g = row
        user = max(1, min(ARGS.user_max, round(p * ARGS.user_scale)))
        return {"user": " ".join(rng.choice(vocab) for _ in range(user)), "user_words": user,
                "max_tokens": max(1, min(ARGS.answer_max, g)),
                "think": min(6 * ARGS.think_s, max(2.0, rng.expovariate(1 / ARGS.think_s))) if ARGS.think_s > 0 else 0.0}

    every = ARGS.every or 1
    convs = []
    for i in range(0, len(requests), every):
        if ARGS.conversations is not None and len(convs) >= ARGS.conversations:
            break
        turns = [turn_of(requests[i])] + [turn_of(rng.choice(requests)) for _ in range(rng.randint(*ARGS.turns) - 1)]
        k = rng.choices(range(ARGS.system_prompts), weights)[0]
        convs.append({"id": f"conv-{len(convs)}", "start": requests[i][0], "system": k,
                      "system_words": len(systems[k].split()), "turns": turns})
    return systems, convs


def prompt_sizes(conv):
    """The prompt words of each turn (system + history + the new user message): an answer has
    exactly max_tokens words ("echo:" and the prompt's words again)."""
    sizes, history = [], conv["system_words"]
    for t in conv["turns"]:
        history += t["user_words"]
        sizes.append(history)
        history += t["max_tokens"]
    return sizes


def slot_seconds(conv):
    """Trace seconds of a slot the conversation's turns take without any cache hit."""
    return sum(ARGS.prefill_ms / 1000 * p + ARGS.decode_ms / 1000 * (t["max_tokens"] - 1)
               for p, t in zip(prompt_sizes(conv), conv["turns"]))


def working_set(systems, convs):
    """Tokens in whole blocks that a cache holding every live prompt would hold, sampled every
    trace second of a run without queueing: every system prompt in use, and each live
    conversation's latest prompt past its system prompt. (mean, peak)."""
    spans = []  # (start, end, [(from, history tokens past the system prompt)])
    for c in convs:
        t, steps = c["start"], []
        for p, turn in zip(prompt_sizes(c), c["turns"]):
            steps.append((t, p - c["system_words"]))
            t += ARGS.prefill_ms / 1000 * p + ARGS.decode_ms / 1000 * (turn["max_tokens"] - 1) + turn["think"]
        spans.append((c["start"], t, steps, c["system"]))
    if not spans:
        return 0, 0
    end = max(s[1] for s in spans)
    samples = []
    t = 0.0
    while t <= end:
        total, used = 0, set()
        for start, stop, steps, k in spans:
            if start <= t < stop:
                used.add(k)
                total += max(h for at, h in steps if at <= t) // BLOCK * BLOCK
        total += sum(len(systems[k].split()) // BLOCK * BLOCK for k in used)
        samples.append(total)
        t += 1.0
    return statistics.mean(samples), max(samples)


# ---------------------------------------------------------------------------------------------
# The load: one asyncio loop, keep-alive connections to the load balancer


async def one_request(pool, body, headers, loop):
    """Streams one chat request. Returns {"first", "end", "node", "text", "usage", "error"}."""
    res = await post_stream(pool, body, headers, loop)
    out = {"first": res["first"], "end": res["end"], "node": res["node"], "text": "", "usage": None,
           "error": res["error"]}
    if out["error"]:
        return out
    try:
        for payload in res["body"].split(b"\n"):
            if not payload.startswith(b"data:"):
                continue
            payload = payload[5:].strip()
            if payload == b"[DONE]":
                continue
            chunk = json.loads(payload)
            for choice in chunk.get("choices") or []:
                out["text"] += (choice.get("delta") or {}).get("content") or ""
            if chunk.get("usage"):
                out["usage"] = chunk["usage"]
    except ValueError as e:
        out["error"] = type(e).__name__
    return out


async def replay(systems, convs, model, session):
    """Runs every conversation; returns one record per planned turn and timing facts."""
    loop = asyncio.get_running_loop()
    pool = Pool(HOST, PORT)
    records = []
    lags = []
    timeout = ARGS.request_timeout_s / S
    t0 = loop.time() + 0.5

    async def conversation(c):
        messages = [{"role": "system", "content": systems[c["system"]]}]
        due = t0 + c["start"] / S
        prompt_words = c["system_words"]
        on = set()
        for n, turn in enumerate(c["turns"]):
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(loop.time() - due)
            messages.append({"role": "user", "content": turn["user"]})
            prompt_words += turn["user_words"]
            body = json.dumps({"model": model, "messages": messages, "max_tokens": turn["max_tokens"], "stream": True,
                               "stream_options": {"include_usage": True}}).encode()
            headers = {ARGS.session_header: c["id"]} if session else {}
            try:
                res = await asyncio.wait_for(one_request(pool, body, headers, loop), timeout)
            except asyncio.TimeoutError:
                res = {"error": "timeout", "node": None}
            rec = {"conv": c["id"], "turn": n, "node": res["node"], "error": res["error"], "prompt_words": prompt_words}
            if not res["error"]:
                rec["ttft"] = (res["first"] - due) * S
                usage = res["usage"] or {}
                rec["usage_prompt"] = usage.get("prompt_tokens")
                rec["answer_ok"] = (len(res["text"].split()) == turn["max_tokens"]
                                    and usage.get("completion_tokens") == turn["max_tokens"])
            records.append(rec)
            if res["error"]:
                for m in range(n + 1, len(c["turns"])):
                    records.append({"conv": c["id"], "turn": m, "node": None, "error": "not sent: an earlier turn failed",
                                    "prompt_words": None})
                return on
            on.add(res["node"])
            # The answer as the replica gave it: the next turn's prefix is exactly what it saw.
            messages.append({"role": "assistant", "content": res["text"]})
            prompt_words += len(res["text"].split())
            due = res["end"] + turn["think"] / S
        return on

    results = await asyncio.gather(*(conversation(c) for c in convs))
    end = loop.time()
    pool.close()
    return {"records": records, "t0": t0, "end": end, "lags": lags, "replicas_per_conv": [len(r) for r in results]}


# ---------------------------------------------------------------------------------------------
# One run


# Busy CPUs outside the run above which a replay's times are flagged.
OTHERS_NOTED = 0.2


def fmt_pct(v):
    return "n/a" if v != v else f"{v:.0%}"


def our_busy():
    """Jiffies used so far by this run's processes: this driver, and every process started
    through the wrapper's links (their command line names BENCH_ROUTING_MARK): the server, the
    replicas, their agents. None without the mark."""
    mark = os.environ.get("BENCH_ROUTING_MARK")
    if not mark:
        return None
    total = sum(os.times()[:2]) * os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if mark.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total


def envs():
    return {"ECHO_PREFILL_US_PER_TOKEN": f"{ARGS.prefill_ms * 1000 / S:.4f}",
            "ECHO_DECODE_US_PER_TOKEN": f"{ARGS.decode_ms * 1000 / S:.4f}",
            "ECHO_MAX_SEQS": str(ARGS.max_seqs),
            "ECHO_PREFIX_CACHE_TOKENS": str(ARGS.cache_tokens)}


def replica_ports(name):
    """node id -> the port of its echo server (on this machine: the local provider)."""
    status, d = http("GET", f"/admin/deployments/{name}")
    assert status == 200, (status, d)
    ports = {}
    for n in d["nodes"]:
        if n["status"] != "ready":
            continue
        status, node = http("GET", f"/admin/nodes/{n['node_id']}")
        assert status == 200, (status, node)
        url = node.get("endpoint_url") or ""
        ports[n["node_id"]] = int(url.rstrip("/").rsplit(":", 1)[1])
    return ports


def cache_counters(ports):
    """node id -> (queries, hits) from its echo server's /metrics on 127.0.0.1."""
    out = {}
    for node, port in ports.items():
        status, text = http("GET", "/metrics", url=f"http://127.0.0.1:{port}", token=False, timeout=10)
        assert status == 200, (node, status)
        values = {}
        for line in text.splitlines():
            for metric in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
                if line.startswith(metric + "{") or line.startswith(metric + " "):
                    values[metric] = values.get(metric, 0.0) + float(line.rsplit(" ", 1)[1])
        out[node] = (values.get("vllm:prefix_cache_queries_total", 0.0), values.get("vllm:prefix_cache_hits_total", 0.0))
    return out


RUNS = []


def run_policy(policy, systems, convs):
    name = f"rt-{policy.replace('_', '-')}-{len(RUNS)}"
    RUNS.append(policy)
    model = f"bench/{name}"
    spec = {"name": name, "model": model, "provider": "local", "envs": envs(), "replicas": ARGS.replicas}
    routing = dict(ARGS.routing_options.get(policy, {}))
    if policy == "session" and ARGS.session_header.lower() != "x-session-id":
        routing["session_header"] = ARGS.session_header
    if policy != "least_load" or routing:
        spec["routing"] = {"policy": policy, **routing}
    print(f"== {policy}: {ARGS.replicas} replicas, routing {json.dumps(spec.get('routing', {'policy': 'least_load'}))} ==")
    status, body = http("POST", "/admin/deployments", spec)
    if status != 201:
        print(f"  not run: the deployment was refused: {status} {json.dumps(body)[:400]}")
        return {"policy": policy, "skipped": f"refused ({status})"}
    t_create = time.time()
    wait_for("bench-routing", f"{name}: {ARGS.replicas} ready replicas",
             lambda: (lambda d: d["replicas"]["ready"] == ARGS.replicas)(http("GET", f"/admin/deployments/{name}")[1]), 300)
    print(f"  {ARGS.replicas} replicas ready {time.time() - t_create:.1f} s (wall) after the create")
    time.sleep(1.0)  # every process's routing table has them
    ports = replica_ports(name)
    before = cache_counters(ports)

    loop = asyncio.new_event_loop()
    busy0, ours0 = machine_busy(), our_busy()
    try:
        out = loop.run_until_complete(replay(systems, convs, model, policy == "session"))
    finally:
        loop.close()
    busy1, ours1 = machine_busy(), our_busy()
    after = cache_counters(ports)
    total = max(1e-9, busy1[1] - busy0[1])
    machine = (busy1[0] - busy0[0]) / total
    # The machine's busy time that was not this run's: other work competing for the CPUs,
    # which stretches the time to first token of a compressed replay.
    others = max(0.0, machine - (ours1 - ours0) / total) if ours0 is not None else math.nan

    records = out["records"]
    sent = [r for r in records if not (r["error"] or "").startswith("not sent")]
    failed = [r for r in records if r["error"]]
    ttfts = sorted(r["ttft"] if not r["error"] else math.inf for r in sent)
    later = sorted(r["ttft"] if not r["error"] else math.inf for r in sent if r["turn"] > 0)
    queries = sum(after[n][0] - before[n][0] for n in ports)
    hits = sum(after[n][1] - before[n][1] for n in ports)
    per_node = {}
    for r in sent:
        if r["node"]:
            per_node[r["node"]] = per_node.get(r["node"], 0) + 1
    spread = sorted(per_node.values(), reverse=True) + [0] * max(0, len(ports) - len(per_node))
    mean_per = sum(spread) / len(spread) if spread else 0
    ok = [r for r in sent if not r["error"]]
    usage_prompt = sum(r["usage_prompt"] or 0 for r in ok)
    mismatched_usage = sum(1 for r in ok if r["usage_prompt"] != r["prompt_words"])
    bad_answers = sum(1 for r in ok if not r["answer_ok"])
    multi = [n for c, n in zip(convs, out["replicas_per_conv"]) if len(c["turns"]) > 1 and n > 0]
    one_replica = sum(1 for n in multi if n == 1) / len(multi) if multi else math.nan
    lags = sorted(out["lags"])
    row = {
        "policy": policy, "requests": len(records), "sent": len(sent), "failed": len(failed),
        "hit_rate": hits / queries if queries else math.nan, "queries": queries, "hits": hits,
        "p50": q(ttfts, 0.5), "p99": q(ttfts, 0.99), "p50_later": q(later, 0.5), "p99_later": q(later, 0.99),
        "spread": spread, "imbalance": (spread[0] / mean_per) if spread and mean_per else math.nan,
        "headers": bool(per_node), "one_replica": one_replica, "machine": machine, "others": others,
    }
    print(f"  replayed {len(records)} requests of {len(convs)} conversations in {out['end'] - out['t0']:.1f} s (wall); "
          f"dispatch lag p99 {q(lags, 0.99) * 1000:.1f} ms wall; the machine's CPUs {machine:.0%} busy, "
          f"{fmt_pct(others)} by processes outside this run")
    if others > OTHERS_NOTED:
        print(f"  NOTE: other work used {others:.0%} of the CPUs during this replay: its times may be stretched by it")
    print(f"  prefix cache: {hits:.0f} of {queries:.0f} prompt tokens hit ({row['hit_rate']:.1%}); "
          f"per replica: {', '.join(f'{(after[n][1] - before[n][1]) / max(1, after[n][0] - before[n][0]):.0%}' for n in sorted(ports))}")
    print(f"  prompt tokens in the answers' usage {usage_prompt}, looked up by the replicas {queries:.0f}"
          f"{'' if usage_prompt == queries else ' (differ: failed requests, or a replica not counted)'}; "
          f"usage != the words sent: {mismatched_usage}; answers not of max_tokens words: {bad_answers}")
    print(f"  TTFT p50 {fmt_s(row['p50'])}, p99 {fmt_s(row['p99'])}; turns after the first: p50 {fmt_s(row['p50_later'])}, "
          f"p99 {fmt_s(row['p99_later'])}; failed {len(failed)}")
    if per_node:
        print(f"  requests per replica (X-Skylaunch-Node): {' / '.join(str(v) for v in spread)} "
              f"(busiest {row['imbalance']:.2f}x the mean); multi-turn conversations on one replica: {one_replica:.0%}")
    else:
        print("  no answer carried X-Skylaunch-Node: spread unknown")
    if failed:
        kinds = {}
        for r in failed:
            kinds[r["error"]] = kinds.get(r["error"], 0) + 1
        print(f"  failures: {kinds}")
    status, _ = http("DELETE", f"/admin/deployments/{name}")
    assert status == 202, status
    wait_for("bench-routing", f"{name} deleted", lambda: http("GET", f"/admin/deployments/{name}")[0] == 404, 300)
    return row


# ---------------------------------------------------------------------------------------------


def main():
    trace = load_trace(ARGS.trace)
    start = ARGS.start_minute * 60
    stop = start + ARGS.minutes * 60
    requests = [(t - start, p, g) for t, p, g in trace if start <= t < stop]
    if not requests:
        raise SystemExit("bench-routing: no arrival in the slice")
    span = max(60.0, requests[-1][0])
    slots = ARGS.replicas * ARGS.max_seqs
    if ARGS.every is None:
        # Plan every arrival once to size the load, then keep every Nth.
        ARGS.every = 1
        _, every_conv = plan(requests)
        work = sum(slot_seconds(c) for c in every_conv)
        ARGS.every = max(1, round(work / (ARGS.load * slots * span)))
    systems, convs = plan(requests)
    if not convs:
        raise SystemExit("bench-routing: no conversation planned")
    work = sum(slot_seconds(c) for c in convs)
    turns = [len(c["turns"]) for c in convs]
    sizes = [p for c in convs for p in prompt_sizes(c)]
    outs = [t["max_tokens"] for c in convs for t in c["turns"]]
    ws_mean, ws_peak = working_set(systems, convs)
    print(f"# trace {ARGS.trace}: {len(trace)} arrivals over {trace[-1][0] / 60:.1f} min; slice minutes {ARGS.start_minute:g} to "
          f"{ARGS.start_minute + ARGS.minutes:g}: {len(requests)} arrivals, a conversation at every {ARGS.every}th: "
          f"{len(convs)} conversations, {sum(turns)} requests; replayed at {S:g}x (arrivals over {span / S:.0f} s wall per policy)")
    print(f"# {os.cpu_count()} cores, {open('/proc/cpuinfo').read().split('model name')[1].split(':', 1)[1].splitlines()[0].strip()}")
    print(f"# replicas {ARGS.replicas}, K = {ARGS.max_seqs}; service model (trace time): prefill {ARGS.prefill_ms:g} ms per uncached "
          f"prompt token, decode {ARGS.decode_ms:g} ms per output token; prefix cache {ARGS.cache_tokens} tokens per replica "
          f"({ARGS.cache_tokens // BLOCK} blocks of {BLOCK}); echo knobs {envs()}")
    print(f"# workload: {ARGS.system_prompts} system prompts of {ARGS.system_words[0]}-{ARGS.system_words[1]} words "
          f"(popularity Zipf {ARGS.system_skew:g}); turns {ARGS.turns[0]}-{ARGS.turns[1]} (mean {statistics.mean(turns):.1f}); "
          f"user message = trace prompt tokens x {ARGS.user_scale:g}, at most {ARGS.user_max} words; max_tokens = trace generated "
          f"tokens, at most {ARGS.answer_max}; think time exponential, mean {ARGS.think_s:g} s; seed {ARGS.seed}")
    print(f"# prompts: mean {statistics.mean(sizes):.0f} words, p99 {q(sorted(sizes), 0.99)}, max {max(sizes)}; answers: mean "
          f"{statistics.mean(outs):.0f} tokens; planned work {work / (slots * span):.0%} of the {slots} slots over the arrivals "
          f"without cache hits (--load {ARGS.load:g})")
    print(f"# working set (every live conversation's latest prompt and the system prompts in use, whole blocks, "
          f"no queueing): mean {ws_mean:.0f}, peak {ws_peak:.0f} tokens, against {ARGS.cache_tokens} per replica, "
          f"{ARGS.cache_tokens * ARGS.replicas} in all")
    if ARGS.dry_run:
        return
    rows = []
    t_all = time.time()
    for policy in ARGS.policies:
        rows.append(run_policy(policy, systems, convs))
    print()
    print(f"## Results ({len(convs)} conversations, {sum(turns)} requests, {ARGS.replicas} replicas, prefix cache "
          f"{ARGS.cache_tokens} tokens each; {ARGS.minutes:g} trace minutes of arrivals at {S:g}x; times in trace seconds; "
          f"took {(time.time() - t_all) / 60:.1f} min wall)")
    print()
    print("| Policy | Requests | Failed | Prefix cache hit rate | TTFT p50 | TTFT p99 | Later turns p50 / p99 | "
          "Requests per replica | Busiest / mean | Conversations on one replica | CPUs busy: all / others |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['policy']} | not run: {r['skipped']} | | | | | | | | | |")
            continue
        spread = " / ".join(str(v) for v in r["spread"]) if r["headers"] else "n/a"
        imb = f"{r['imbalance']:.2f}" if r["headers"] else "n/a"
        one = f"{r['one_replica']:.0%}" if r["headers"] and r["one_replica"] == r["one_replica"] else "n/a"
        print(f"| {r['policy']} | {r['requests']} | {r['failed']} | {r['hit_rate']:.1%} | {fmt_s(r['p50'])} | {fmt_s(r['p99'])} | "
              f"{fmt_s(r['p50_later'])} / {fmt_s(r['p99_later'])} | {spread} | {imb} | {one} | {r['machine']:.0%} / "
              f"{fmt_pct(r['others'])}{' (!)' if r['others'] > OTHERS_NOTED else ''} |")
    if any(r.get("others", 0) > OTHERS_NOTED for r in rows):
        print()
        print(f"(!) other processes used over {OTHERS_NOTED:.0%} of the machine's CPUs during that replay: its times to first "
              "token (the tail above all) may be stretched by the competition as well as by the policy; rerun on a quiet "
              "machine before reading the difference as the policy's.")


main()
