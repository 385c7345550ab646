"""Driver for scripts/bench-launch: submits N launch jobs at once to a running control plane,
waits for all of them, checks the outcome, and reports control-plane CPU per job and peak RSS.
Talks only to the loopback URL it is given."""
import json
import os
import sys
import threading
import time
import urllib.request

url, token, n, pid, calls_log = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
assert url.startswith("http://127."), "loopback only"


def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read() or b"null")


def cpu_seconds():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


cpu0, t0 = cpu_seconds(), time.time()
ids, lock = [], threading.Lock()


def submit(i):
    job = call("POST", "/admin/launch-jobs", {"model": f"bench/model-{i}", "provider": "skypilot", "gpu": "L4",
                                               "use_spot": True, "regions": ["us-east-1"], "name": f"bench-{i}"})
    with lock:
        ids.append(job["id"])


threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
submitted = time.time() - t0
deadline = time.time() + 900
while True:
    jobs = {j["id"]: j for j in call("GET", "/admin/launch-jobs")["jobs"] if j["id"] in ids}
    done = [j for j in jobs.values() if j["status"] in ("succeeded", "failed", "cancelled")]
    if len(done) == n or time.time() > deadline:
        break
    time.sleep(1)
wall = time.time() - t0
cpu = cpu_seconds() - cpu0
by_status = {}
for j in jobs.values():
    by_status[j["status"]] = by_status.get(j["status"], 0) + 1
launches = [json.loads(l) for l in open(calls_log) if l.startswith('["launch"')]
clusters = [c[c.index("-c") + 1] for c in launches]
print(f"jobs:                   {n} (submitted in {submitted:.1f} s)")
print(f"outcome:                {by_status}")
print(f"all finished in:        {wall:.1f} s")
print(f"sky launch calls:       {len(launches)} for {len(set(clusters))} distinct clusters (duplicates: {len(clusters) - len(set(clusters))})")
print(f"control-plane CPU:      {cpu:.2f} s in all, {cpu / n * 1000:.1f} ms per job")
print(f"control-plane peak RSS: {peak_rss_mib():.0f} MiB")
failed = [j for j in jobs.values() if j["status"] != "succeeded"]
if failed:
    print(f"first failure:          {json.dumps(failed[0]['error'])[:600]}")
for j in jobs.values():
    if j["node_id"] and j["status"] == "succeeded":
        call("DELETE", f"/admin/nodes/{j['node_id']}")
ok = by_status.get("succeeded") == n and len(clusters) == len(set(clusters)) == n
sys.exit(0 if ok else 1)
