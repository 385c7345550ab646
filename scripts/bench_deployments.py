"""Driver for scripts/bench-deployments: creates N deployments of R replicas each on the local
provider (every replica is a real echo model server and a real agent on this machine), and
measures how the reconciler copes:

- time to converge: every deployment created at once, until every one is `serving`;
- one reconciler pass over every deployment while converged: its duration (from
  skylaunch_reconciler_tick_seconds), the control plane's CPU per pass (utime + stime from
  /proc/<pid>/stat over the window, divided by the passes in it) and the database writes per
  pass (skylaunch_reconciler_writes_total; the goal is none);
- time from a replica's death (its processes killed, as if its VM died) to its replacement
  being ready, for a few replicas of different deployments killed at once.

At the end every deployment is deleted, and nothing any replica of this run started may be left
running. Talks only to the loopback URL it is given. Prints figures; exits non-zero if a check
fails. No timing is a check: these are measurements.
"""
import concurrent.futures
import datetime
import json
import os
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request

URL, TOKEN, PID = sys.argv[1], sys.argv[2], int(sys.argv[3])
DEPLOYMENTS, REPLICAS, KILLS = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
WINDOW_S = float(os.environ.get("SKYLAUNCH_BENCH_WINDOW_S", "60"))
CONVERGE_TIMEOUT_S = float(os.environ.get("SKYLAUNCH_BENCH_CONVERGE_TIMEOUT_S", "1200"))
assert URL.startswith("http://127.0.0.1:"), "loopback only"
sys.stdout.reconfigure(line_buffering=True)
NAMES = [f"bench-{i}" for i in range(DEPLOYMENTS)]
failures = []


def check(ok, what):
    print(f"  [{'ok' if ok else 'FAILED'}] {what}")
    if not ok:
        failures.append(what)


def http(method, path, body=None, timeout=30):
    req = urllib.request.Request(URL + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            raw = res.read()
            return res.status, (json.loads(raw) if raw and path != "/metrics" else raw.decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def deployments():
    return {d["name"]: d for d in http("GET", "/admin/deployments")[1]["deployments"]}


def serving(d):
    return (d["status"] == "serving" and d["replicas"]["ready"] == REPLICAS and d["replicas"]["launching"] == 0
            and d["replicas"]["draining"] == 0 and len(d["nodes"]) == REPLICAS)


def ts(rfc3339):
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def cpu_seconds(pid=PID):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid=PID, key="VmRSS:"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024


class Metrics:
    """One scrape of /metrics: series by name and label text."""

    def __init__(self):
        self.series = {}
        for line in http("GET", "/metrics")[1].splitlines():
            if not line or line.startswith("#"):
                continue
            key, value = line.rsplit(" ", 1)
            self.series[key] = float(value)

    def get(self, key):
        return self.series.get(key, 0.0)

    def histogram(self, name, labels=""):
        """(count, sum, [(upper bound, cumulative count)]) of one histogram series."""
        prefix = f"{name}_bucket{{{labels + ',' if labels else ''}le=\""
        buckets = sorted((float("inf") if k[len(prefix):-2] == "+Inf" else float(k[len(prefix):-2]), v)
                         for k, v in self.series.items() if k.startswith(prefix))
        suffix = f"{{{labels}}}" if labels else ""
        return self.get(f"{name}_count{suffix}"), self.get(f"{name}_sum{suffix}"), buckets


def histogram_delta(after, before):
    count = after[0] - before[0]
    total = after[1] - before[1]
    old = dict(before[2])
    return count, total, [(le, c - old.get(le, 0.0)) for le, c in after[2]]


def quantile(q, count, buckets):
    """histogram_quantile's estimate (linear within the bucket) and the bucket's upper bound."""
    if count <= 0:
        return None, None
    rank, lower, below = q * count, 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if le == float("inf"):
                return lower, le
            inside = cumulative - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0), le
        lower, below = le, cumulative
    return lower, float("inf")


def ms(seconds):
    return f"{seconds * 1000:.2f} ms"


def bound(le):
    return "+Inf" if le == float("inf") else f"{le * 1000:g} ms"


def our_jobs():
    return {j["id"]: j for j in http("GET", "/admin/launch-jobs")[1]["jobs"]}


def processes_by_job(job_ids):
    """pid -> launch job id for every process a local launch of this run started (they carry
    SKYLAUNCH_LOCAL_JOB=<job id> in their environment)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for var in environ:
            if var.startswith(b"SKYLAUNCH_LOCAL_JOB="):
                job = var.split(b"=", 1)[1].decode()
                if job in job_ids:
                    found[int(entry)] = job
                break
    return found


def kill_vm(job_id):
    """Kills every process the launch started (model server and agent), as if its VM died."""
    pids = [p for p, j in processes_by_job({job_id}).items() if j == job_id]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def converge():
    print(f"== Converge: {DEPLOYMENTS} deployments x {REPLICAS} replicas, created at once ==")
    writes0 = Metrics().get("skylaunch_reconciler_writes_total")
    cpu0 = cpu_seconds()
    t0 = time.time()

    def create(name):
        status, body = http("POST", "/admin/deployments", {"name": name, "model": f"bench/{name}",
                                                           "provider": "local", "replicas": REPLICAS})
        assert status == 201, (status, body)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(create, NAMES))
    created = time.time() - t0
    first_serving = {}
    deadline = time.time() + CONVERGE_TIMEOUT_S
    last_print = time.time()
    while time.time() < deadline:
        ds = deployments()
        now = time.time()
        for name, d in ds.items():
            if serving(d):
                first_serving.setdefault(name, now - t0)
        if len(first_serving) == DEPLOYMENTS and all(serving(d) for d in ds.values()):
            break
        if now - last_print > 30:
            ready = sum(d["replicas"]["ready"] for d in ds.values())
            print(f"  ... {now - t0:.0f} s: {len(first_serving)} deployments serving, {ready} replicas ready")
            last_print = now
        time.sleep(0.5)
    else:
        ds = deployments()
        by_status = {}
        for d in ds.values():
            by_status[d["status"]] = by_status.get(d["status"], 0) + 1
        raise SystemExit(f"bench-deployments: not converged after {CONVERGE_TIMEOUT_S:.0f} s: {by_status}")
    took = time.time() - t0
    m = Metrics()
    times = sorted(first_serving.values())
    print(f"  created in {created:.1f} s; every deployment serving {took:.1f} s after the first create "
          f"(first {times[0]:.1f} s, median {statistics.median(times):.1f} s)")
    print(f"  reconciler writes until converged: {m.get('skylaunch_reconciler_writes_total') - writes0:.0f} "
          f"({(m.get('skylaunch_reconciler_writes_total') - writes0) / (DEPLOYMENTS * REPLICAS):.1f} per replica); "
          f"control-plane CPU {cpu_seconds() - cpu0:.1f} s")
    jobs = our_jobs()
    procs = processes_by_job(set(jobs))
    nodes = sum(len(d["nodes"]) for d in ds.values())
    check(nodes == DEPLOYMENTS * REPLICAS and len(jobs) == DEPLOYMENTS * REPLICAS,
          f"one replica per slot: {nodes} live replicas, {len(jobs)} launch jobs for {DEPLOYMENTS * REPLICAS} slots")
    check(len(procs) == 2 * DEPLOYMENTS * REPLICAS,
          f"{len(procs)} replica processes running (a model server and an agent per replica)")
    return ds


def converged_window():
    print(f"== Converged: one reconciler pass over all {DEPLOYMENTS} deployments, over {WINDOW_S:.0f} s ==")
    # Let the last launch actions complete (the pass after a job ends writes its completion).
    time.sleep(5)
    before, cpu0, t0 = Metrics(), cpu_seconds(), time.time()
    time.sleep(WINDOW_S)
    after, cpu1, t1 = Metrics(), cpu_seconds(), time.time()
    count, total, buckets = histogram_delta(after.histogram("skylaunch_reconciler_tick_seconds"),
                                            before.histogram("skylaunch_reconciler_tick_seconds"))
    writes = after.get("skylaunch_reconciler_writes_total") - before.get("skylaunch_reconciler_writes_total")
    cpu = cpu1 - cpu0
    p50, p50_le = quantile(0.5, count, buckets)
    p99, p99_le = quantile(0.99, count, buckets)
    print(f"  passes: {count:.0f} in {t1 - t0:.1f} s ({count / (t1 - t0):.1f} per second; the reconcile interval "
          f"is {os.environ.get('SKYLAUNCH_RECONCILE_INTERVAL', '?')}, and a replica's status change wakes it)")
    if count:
        print(f"  pass duration: mean {ms(total / count)}, p50 ~{ms(p50)} (bucket <= {bound(p50_le)}), "
              f"p99 ~{ms(p99)} (bucket <= {bound(p99_le)})")
        print(f"  control-plane CPU: {cpu:.2f} s in the window ({cpu / (t1 - t0):.1%} of one core), "
              f"{cpu / count * 1000:.1f} ms per pass (all of the process: it also answers "
              f"{DEPLOYMENTS * REPLICAS} agents' heartbeats)")
        print(f"  reconciler database writes: {writes:.0f} in the window, {writes / count:.2f} per pass")
    print(f"  control-plane RSS: {rss_mib():.0f} MiB (peak {rss_mib(key='VmHWM:'):.0f} MiB)")
    check(count > 0, "the reconciler ran while converged")
    check(writes == 0, f"no reconciler write while converged ({writes:.0f})")
    return {"passes": count, "writes": writes}


def kills(ds):
    print(f"== Replica deaths: one replica of each of {KILLS} deployments killed at once ==")
    victims = []
    for i in range(KILLS):
        name = NAMES[(i * DEPLOYMENTS) // KILLS]
        node = ds[name]["nodes"][0]
        victims.append({"deployment": name, "node_id": node["node_id"], "slot": node["slot"],
                        "job": node["launch_job_id"]})
    before = Metrics().histogram("skylaunch_deployment_replacement_seconds", 'drift="unhealthy_replica"')
    t_kill = time.time()
    for v in victims:
        v["killed"] = kill_vm(v["job"])
    for v in victims:
        v["at"] = t_kill
    deadline = time.time() + 600
    while time.time() < deadline and any("ready" not in v for v in victims):
        for v in victims:
            if "ready" in v:
                continue
            now = time.time()
            if "unhealthy" not in v:
                status = http("GET", f"/admin/nodes/{v['node_id']}")[1]["status"]
                if status != "ready":
                    v["unhealthy"] = now - v["at"]
                    v["status"] = status
            d = http("GET", f"/admin/deployments/{v['deployment']}")[1]
            if any(n["slot"] == v["slot"] and n["node_id"] != v["node_id"] and n["status"] == "ready"
                   for n in d["nodes"]):
                v["ready"] = now - v["at"]
        time.sleep(0.25)
    check(all("ready" in v for v in victims), f"every killed replica was replaced ({sum('ready' in v for v in victims)}/{KILLS})")
    for v in victims:
        actions = http("GET", f"/admin/deployments/{v['deployment']}/actions")[1]["actions"]
        replace = [a for a in actions if a["kind"] == "replace_replica" and a["node_id"] == v["node_id"]]
        v["planned"] = ts(replace[0]["created_at"]) - v["at"] if replace else None
        print(f"  {v['deployment']} slot {v['slot']}: {v['killed']} processes killed; node {v.get('status', '?')} after "
              f"{v.get('unhealthy', float('nan')):.1f} s, replacement planned after "
              f"{v['planned'] if v['planned'] is not None else float('nan'):.1f} s, ready after {v.get('ready', float('nan')):.1f} s")
    ready = sorted(v["ready"] for v in victims if "ready" in v)
    if ready:
        print(f"  death -> replacement ready: min {ready[0]:.1f} s, median {statistics.median(ready):.1f} s, max {ready[-1]:.1f} s")
    # The histogram measures from the replace action (planned once the node is dead) to ready.
    wait_for_histogram = time.time() + 30
    while True:
        after = Metrics().histogram("skylaunch_deployment_replacement_seconds", 'drift="unhealthy_replica"')
        count, total, buckets = histogram_delta(after, before)
        if count >= len(ready) or time.time() > wait_for_histogram:
            break
        time.sleep(0.5)
    if count:
        p50, le = quantile(0.5, count, buckets)
        print(f"  skylaunch_deployment_replacement_seconds{{drift=\"unhealthy_replica\"}} (action planned -> ready): "
              f"{count:.0f} observed, mean {total / count:.2f} s, p50 ~{p50:.2f} s (bucket <= {'+Inf' if le == float('inf') else f'{le:g} s'})")
    # Every deployment is back to its replicas, and no slot got two.
    deadline = time.time() + 300
    while time.time() < deadline:
        ds = deployments()
        if all(serving(d) for d in ds.values()):
            break
        time.sleep(1)
    check(all(serving(d) for d in ds.values()), "every deployment serving again with exactly its replicas")
    jobs = our_jobs()
    procs = processes_by_job(set(jobs))
    check(len(procs) == 2 * DEPLOYMENTS * REPLICAS,
          f"{len(procs)} replica processes running after the replacements (the dead ones' are gone)")
    # Healed: the reconciler is back to writing nothing.
    time.sleep(5)
    w0, p0 = Metrics(), time.time()
    time.sleep(15)
    w1 = Metrics()
    writes = w1.get("skylaunch_reconciler_writes_total") - w0.get("skylaunch_reconciler_writes_total")
    passes = w1.get("skylaunch_reconciler_tick_seconds_count") - w0.get("skylaunch_reconciler_tick_seconds_count")
    check(writes == 0, f"no reconciler write once healed ({writes:.0f} in {passes:.0f} passes over {time.time() - p0:.0f} s)")


def delete_all():
    print("== Delete every deployment; nothing of the run may be left running ==")
    jobs = our_jobs()
    before = Metrics().histogram("skylaunch_reconciler_tick_seconds")
    t0 = time.time()
    for name in NAMES:
        status, body = http("DELETE", f"/admin/deployments/{name}")
        assert status == 202, (status, body)
    deadline = time.time() + 600
    while time.time() < deadline and deployments():
        time.sleep(1)
    left = deployments()
    print(f"  every deployment gone {time.time() - t0:.1f} s after the deletes" if not left else
          f"  {len(left)} deployments still there after 600 s")
    check(not left, "every deployment deleted")
    count, total, buckets = histogram_delta(Metrics().histogram("skylaunch_reconciler_tick_seconds"), before)
    under_1s = dict(buckets).get(1.0, 0.0)
    print(f"  reconciler passes meanwhile: {count:.0f}, {total:.1f} s in all, {count - under_1s:.0f} of them over 1 s "
          f"(drains and terminations run on tasks of their own, beside the passes)")
    # Teardown stops a group with SIGTERM and waits for it: give the last ones a moment.
    deadline = time.time() + 30
    while time.time() < deadline and processes_by_job(set(jobs)):
        time.sleep(0.5)
    procs = processes_by_job(set(jobs))
    check(not procs, f"no replica process left running ({len(procs)})")
    for pid in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main():
    print(f"# bench-deployments: {DEPLOYMENTS} x {REPLICAS} on the local provider, {os.cpu_count()} cores, "
          f"{open('/proc/cpuinfo').read().split('model name')[1].split(':', 1)[1].splitlines()[0].strip()}")
    print("# server: " + ", ".join(f"{k.removeprefix('SKYLAUNCH_').lower()} {os.environ.get(k, 'default')}" for k in (
        "SKYLAUNCH_RECONCILE_INTERVAL", "SKYLAUNCH_HEARTBEAT_INTERVAL", "SKYLAUNCH_REPLICA_UNHEALTHY_GRACE",
        "SKYLAUNCH_JOB_LEASE", "SKYLAUNCH_MAX_CONCURRENT_LAUNCHES")))
    try:
        ds = converge()
        converged_window()
        if KILLS:
            kills(ds)
    finally:
        delete_all()
    print()
    print("bench-deployments: all checks passed" if not failures else
          f"bench-deployments: {len(failures)} check(s) FAILED: {failures}")
    sys.exit(1 if failures else 0)


main()
