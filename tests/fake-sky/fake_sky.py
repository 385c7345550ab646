"""A stand-in for SkyPilot 0.14's `sky` CLI in tests, where no cloud VM can exist.

It behaves like the CLI at its edges:
- `sky launch -y -c NAME --detach-run TASK` replays a recorded transcript (stdout, then stderr,
  with pacing) and exits with the transcript's exit code; an unknown option is a click usage
  error (exit 2). Like the real CLI, the client only follows a *request* that runs on its own
  (SkyPilot 0.14 runs every request in its local API server): killing the client, or the process that started it,
  does not stop the launch. The request holds the cluster's lock while it runs, the cluster is
  INIT from its start and UP once launched. When the transcript is a successful launch, it
  plays the VM's part: it reads the task like SkyPilot would and starts the real node agent with
  the task's `envs` and `secrets`, next to skylaunch's echo model server.
- `sky status [NAME...] [-o json]` prints what SkyPilot 0.14.1 prints: the clusters table (or
  the records as JSON), and for a named cluster it does not have, `Cluster 'NAME' not found.`;
  the "Managed jobs" and "Services" sections only when no name is given. Exit 0 in every case.
- `sky --version` prints SkyPilot 0.14.1's version line; `sky check [CLOUD...]` prints what
  0.14.1 prints for the clouds checked (see `check`) and exits 0 whatever is enabled.
- `sky down -y NAME` does not wait behind a running launch: like SkyPilot, it cancels the
  cluster's running launch request and force-unlocks the cluster, then stops that "VM". Its
  outcome is on stdout and it exits 0 whether the cluster was removed, was not there, or the
  teardown failed.
Every call is appended to $FAKE_SKY_STATE/calls.log as JSON; every VM started or stopped to
$FAKE_SKY_STATE/vms.log, so a test can tell whether a cluster ever had two VMs.

Environment: FAKE_SKY_STATE (dir), FAKE_SKY_TRANSCRIPT (file), FAKE_SKY_DELAY_S (per line,
default 0.01), FAKE_SKY_HANG=1 (never exit after the stdout part, like a launch stuck retrying;
that launch runs in the client itself and holds no cluster lock, so tests can cancel it),
FAKE_SKY_DOWN_FAILS=1 (every `sky down` of an existing cluster fails the way SkyPilot reports a
failed teardown: the failure lines on stdout, exit 0, the cluster and its "VM" left as they
were; a file named `down-fails` in FAKE_SKY_STATE does the same while it exists, so a test can
turn it on and off), FAKE_SKY_SKYLAUNCH_BIN and FAKE_SKY_AGENT_BIN (for the "VM").
A file named `down-slow` in FAKE_SKY_STATE (a number of seconds) makes `sky down` take that long.
A file named `transcript` in FAKE_SKY_STATE replaces FAKE_SKY_TRANSCRIPT while it exists (so a
test can make launches start failing, and stop). A task that asks for spot only (no on-demand candidate) replays FAKE_SKY_SPOT_TRANSCRIPT instead
when set, or the transcript a file named `spot-transcript` in FAKE_SKY_STATE names while it
exists (so a test can make spot capacity vanish and come back). The "VM" reports itself as spot
when the task's first candidate is spot (and, while such a spot transcript is set, only for a
spot-only task: a task with an on-demand fallback then gets on-demand). FAKE_SKY_IMDS_URL is the metadata service the VM's agent
polls for spot interruption notices (default: a closed port).

The wordings are SkyPilot 0.14.1's; file:line references are inside the installed `sky` package.
"""
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import yaml  # PyYAML: a SkyPilot dependency, present in the test venv

STATE = os.environ["FAKE_SKY_STATE"]


def record(args):
    with open(os.path.join(STATE, "calls.log"), "a") as f:
        f.write(json.dumps(args) + "\n")
    # The names of the variables `sky` was started with, so tests can check what it inherits.
    with open(os.path.join(STATE, "env-names.log"), "a") as f:
        f.write(" ".join(sorted(os.environ)) + "\n")


def transcript(path):
    code, out, err, section = 0, [], [], None
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if section is None and line.startswith("# exit code:"):
                code = int(line.split(":")[1].split()[0])
            elif line.startswith("## ---- STDOUT"):
                section = out
            elif line.startswith("## ---- STDERR"):
                section = err
            elif section is not None:
                section.append(line.replace("^[[", "\x1b["))
    return code, out, err


def spot_only(task):
    resources = task.get("resources") or {}
    ordered = resources.get("ordered")
    if ordered:
        return all(c.get("use_spot") for c in ordered)
    return bool(resources.get("use_spot"))


def spot_transcript():
    """The transcript of a spot-only launch while spot capacity is gone, if a test set one."""
    override = os.path.join(STATE, "spot-transcript")
    if os.path.exists(override):
        with open(override) as f:
            return f.read().strip()
    return os.environ.get("FAKE_SKY_SPOT_TRANSCRIPT")


def transcript_for(task):
    """The transcript this task's launch replays (see the module doc)."""
    if spot_only(task) and spot_transcript():
        return transcript(spot_transcript())
    override = os.path.join(STATE, "transcript")
    if os.path.exists(override):
        with open(override) as f:
            return transcript(f.read().strip())
    return transcript(os.environ["FAKE_SKY_TRANSCRIPT"])


def vm_is_spot(task):
    """Whether the launched VM is a spot instance: its first candidate's market, unless spot
    capacity is gone (a test set a spot transcript) and an on-demand candidate got the VM."""
    resources = task.get("resources") or {}
    ordered = resources.get("ordered")
    first = bool(ordered[0].get("use_spot")) if ordered else bool(resources.get("use_spot"))
    return first and (spot_only(task) or not spot_transcript())


def usage_error(option):
    print("Usage: sky launch [OPTIONS] [ENTRYPOINT]...", file=sys.stderr)
    print("Try 'sky launch -h' for help.", file=sys.stderr)
    print("", file=sys.stderr)
    print(f"Error: No such option: {option}", file=sys.stderr)
    sys.exit(2)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ledger(event, cluster, pids):
    with open(os.path.join(STATE, "vms.log"), "a") as f:
        f.write(json.dumps({"event": event, "cluster": cluster, "pids": pids, "at": time.time()}) + "\n")


def cluster_lock(cluster):
    """SkyPilot's per-cluster lock: held by a running launch (a second launch of the cluster
    waits for it; `sky down` cancels the holder instead)."""
    lock = open(os.path.join(STATE, f"{cluster}.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def set_status(cluster, status):
    path = os.path.join(STATE, f"{cluster}.status")
    if status is None:
        if os.path.exists(path):
            os.remove(path)
        return
    with open(path + ".tmp", "w") as f:
        f.write(status)
    os.replace(path + ".tmp", path)


def start_vm(task, cluster):
    envs, secrets = task["envs"], task["secrets"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # The model server's key, as the template's run gives it to vLLM (VLLM_API_KEY).
    key = secrets["SKYLAUNCH_MODEL_SERVER_KEY"]
    echo = subprocess.Popen([os.environ["FAKE_SKY_SKYLAUNCH_BIN"], "echo-server", "--listen", f"127.0.0.1:{port}",
                             "--model", envs["MODEL_ID"]],
                            env={"PATH": os.environ.get("PATH", ""), "SKYLAUNCH_MODEL_SERVER_KEY": key}, **quiet)
    agent_env = {
        "PATH": os.environ.get("PATH", ""),
        "SKYLAUNCH_CONTROL_PLANE_URL": envs["SKYLAUNCH_CONTROL_PLANE_URL"],
        "SKYLAUNCH_NODE_ID": envs["SKYLAUNCH_NODE_ID"],
        "SKYLAUNCH_NODE_TOKEN": secrets["SKYLAUNCH_NODE_TOKEN"],
        "SKYLAUNCH_MODEL_SERVER_KEY": key,
        "SKYLAUNCH_MODEL_SERVER_URL": url,
        "SKYLAUNCH_MODEL_NAME": envs["MODEL_ID"],
        "SKYLAUNCH_ENDPOINT_URL": url,
        "SKYLAUNCH_PROVIDER": "aws",
        "SKYLAUNCH_REGION": "us-east-1",
        "SKYLAUNCH_ZONE": "us-east-1a",
        "SKYLAUNCH_INSTANCE_TYPE": "g6.xlarge",
        "SKYLAUNCH_GPU_TYPE": "L4",
        "SKYLAUNCH_SPOT_INSTANCE": "true" if vm_is_spot(task) else "false",
        "SKYLAUNCH_IMDS_URL": os.environ.get("FAKE_SKY_IMDS_URL", "http://127.0.0.1:9"),
        "SKYLAUNCH_SPOT_POLL_INTERVAL": os.environ.get("FAKE_SKY_SPOT_POLL_INTERVAL", "5s"),
        "SKYLAUNCH_NVIDIA_SMI": "/nonexistent/nvidia-smi",
    }
    # The "VM's disk": the agent's output, its own copy of the token and the task's envs, so
    # tests can check the token and the envs values appear nowhere else.
    with open(os.path.join(STATE, f"{cluster}.token"), "w") as f:
        f.write(secrets["SKYLAUNCH_NODE_TOKEN"])
    with open(os.path.join(STATE, f"{cluster}.envs.json"), "w") as f:
        json.dump(envs, f)
    with open(os.path.join(STATE, f"{cluster}.model_key"), "w") as f:
        f.write(key)
    agent_log = open(os.path.join(STATE, f"{cluster}.agent.log"), "w")
    agent = subprocess.Popen([os.environ["FAKE_SKY_AGENT_BIN"]], env=agent_env, stdin=subprocess.DEVNULL,
                             stdout=agent_log, stderr=agent_log, start_new_session=True)
    with open(os.path.join(STATE, f"{cluster}.pids"), "w") as f:
        json.dump([echo.pid, agent.pid], f)
    ledger("up", cluster, [echo.pid, agent.pid])


def launch(args):
    cluster, task_path, i = None, None, 0
    while i < len(args):
        a = args[i]
        if a in ("-y", "--yes", "--detach-run", "-d"):
            pass
        elif a in ("-c", "--cluster"):
            i += 1
            cluster = args[i]
        elif a.startswith("-"):
            usage_error(a)
        else:
            task_path = a
        i += 1
    with open(task_path) as f:
        task = yaml.safe_load(f)
    code, out, err = transcript_for(task)
    delay = float(os.environ.get("FAKE_SKY_DELAY_S", "0.01"))
    if os.environ.get("FAKE_SKY_HANG") == "1":
        for line in out:
            print(line, flush=True)
            time.sleep(delay)
        while True:
            time.sleep(3600)
    # The client uploads the task with the request (the API server keeps its own copy), then
    # follows the request's output until it ends.
    request = os.path.join(STATE, f"request-{cluster}-{time.time_ns()}")
    with open(request + ".task.json", "w", opener=lambda p, fl: os.open(p, fl, 0o600)) as f:
        json.dump(task, f)
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "_request", cluster, request],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    pos = 0
    while True:
        finished = os.path.exists(request + ".exit")
        with open(request + ".out", "a+") as f:
            f.seek(pos)
            chunk = f.read()
        complete = chunk[:chunk.rfind("\n") + 1]
        pos += len(complete.encode())
        if complete:
            sys.stdout.write(complete)
            sys.stdout.flush()
        if finished and not complete:
            break
        time.sleep(0.02)
    with open(request + ".err") as f:
        sys.stderr.write(f.read())
    with open(request + ".exit") as f:
        sys.exit(int(f.read()))


def request_file(cluster):
    """This launch request's entry among the cluster's running requests (its pid and path).
    Cluster names hold no dots, so `NAME.request.` names one cluster's entries only."""
    return os.path.join(STATE, f"{cluster}.request.{os.getpid()}")


def finish_request(request, code, err):
    with open(request + ".err", "w") as f:
        f.writelines(line + "\n" for line in err)
    with open(request + ".exit.tmp", "w") as f:
        f.write(str(code))
    os.replace(request + ".exit.tmp", request + ".exit")


def run_request(cluster, request):
    """The launch as SkyPilot's API server runs it: on its own, whatever happens to the client.
    `sky down` cancels it with SIGTERM, as SkyPilot kills a cluster's other requests."""
    with open(request + ".task.json") as f:
        task = json.load(f)
    os.remove(request + ".task.json")
    code, out, err = transcript_for(task)
    delay = float(os.environ.get("FAKE_SKY_DELAY_S", "0.01"))

    starting_vm = False

    def cancelled(signum, frame):
        if starting_vm:
            # Starting the "VM" and recording its pids is not cut short: the request ends
            # normally and `sky down` (waiting for that) finds the pids of the VM it started.
            return
        # What the following client prints for a request cancelled by another process
        # (sky/client/sdk.py:2454-2459, raised without a traceback), then exits 1.
        if os.path.exists(request_file(cluster)):
            os.remove(request_file(cluster))
        request_id = os.path.basename(request)
        finish_request(request, 1, [f"sky.exceptions.RequestCancelled: Current 'sky.launch' request "
                                    f"({request_id}) is cancelled by another process."])
        os._exit(1)

    signal.signal(signal.SIGTERM, cancelled)
    with open(request_file(cluster) + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "request": request}, f)
    os.replace(request_file(cluster) + ".tmp", request_file(cluster))
    lock = cluster_lock(cluster)
    set_status(cluster, "INIT")
    with open(request + ".out", "a") as f:
        for line in out:
            f.write(line + "\n")
            f.flush()
            time.sleep(delay)
    # From here a cancel waits for the request's end (a flag, not a blocked SIGTERM: the VM's
    # processes would inherit the blocked signal and outlive `sky down`).
    starting_vm = True
    if code == 0:
        start_vm(task, cluster)
        set_status(cluster, "UP")
    elif not os.path.exists(os.path.join(STATE, f"{cluster}.pids")):
        set_status(cluster, None)  # a failed provision removes what it made
    os.remove(request_file(cluster))
    finish_request(request, code, err)
    lock.close()


def alive(pid):
    """Whether `pid` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cancel_requests(cluster):
    """What `sky down` does before tearing down: it kills the cluster's other requests and
    force-unlocks the cluster instead of waiting for its lock
    (sky/backends/cloud_vm_ray_backend.py:4765-4784)."""
    running = []
    for entry in os.listdir(STATE):
        if entry.startswith(f"{cluster}.request.") and entry.rsplit(".", 1)[1].isdigit():
            try:
                with open(os.path.join(STATE, entry)) as f:
                    running.append(json.load(f))
            except (FileNotFoundError, ValueError):
                pass
    for request in running:
        try:
            os.kill(request["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    # Each ends at once, or right after recording a VM it was starting.
    for request in running:
        while alive(request["pid"]) and not os.path.exists(request["request"] + ".exit"):
            time.sleep(0.01)


def status(args):
    names, output, i = [], "table", 0
    while i < len(args):
        a = args[i]
        if a in ("-o", "--output"):
            i += 1
            output = args[i].lower()
        elif a.startswith("--output="):
            output = a.split("=", 1)[1].lower()
        elif not a.startswith("-"):
            names.append(a)
        i += 1
    rows = []
    for entry in sorted(os.listdir(STATE)):
        if entry.endswith(".status"):
            name = entry[: -len(".status")]
            if not names or name in names:
                with open(os.path.join(STATE, entry)) as f:
                    rows.append((name, f.read().strip()))
    missing = [n for n in names if n not in {name for name, _ in rows}]
    if missing:
        # The API server's log line for queried clusters it does not have, streamed to the
        # client's stdout before anything else (sky/backends/backend_utils.py:4083-4089).
        print(f"Cluster(s) not found: \x1b[1m{', '.join(missing)}\x1b[0m.")
    if output == "json":
        # `sky status -o json`: the records, without handle and credentials
        # (sky/client/cli/command.py:2317-2323; fields: sky/schemas/api/responses.py:99-150).
        print(json.dumps([{
            "name": name, "launched_at": int(time.time()) - 60, "last_use": "sky launch",
            "status": st, "autostop": -1, "to_down": False, "cluster_hash": f"hash-{name}",
            "cluster_ever_up": st == "UP", "user_hash": "fake0000", "user_name": "fake",
            "workspace": "default", "is_managed": False,
            "init_kind": "launching" if st == "INIT" else None, "nodes": 1, "cloud": "AWS",
            "region": "us-east-1",
        } for name, st in rows], indent=2))
        return
    # sky/client/cli/command.py:2027-2031 (title), :2354 (Clusters).
    print("Enabled Infra: AWS")
    print("")
    print("Clusters")
    if rows:
        width = max(len("NAME"), *(len(n) for n, _ in rows)) + 2
        print(f"{'NAME':<{width}}INFRA             RESOURCES                                      STATUS  AUTOSTOP  LAUNCHED")
        for name, st in rows:
            print(f"{name:<{width}}AWS (us-east-1a)  1x(gpus=L4:1, g6.xlarge, cpus=4, mem=16, ...)  {st:<8}-         1 min ago")
    if names:
        # sky/utils/cli_utils/status_utils.py:104-115; no other sections for named clusters
        # (sky/client/cli/command.py:2165-2169).
        if missing:
            quoted = ", ".join(repr(n) for n in missing)
            print(f"Cluster{'s' if len(missing) > 1 else ''} {quoted} not found.")
        return
    if not rows:
        print("No existing clusters.")  # status_utils.py:116-117
    print("")
    print("Managed jobs")
    print("No in-progress managed jobs. (See: sky jobs -h)")
    print("")
    print("Services")
    print("No live services.")


def down_fails():
    return os.environ.get("FAKE_SKY_DOWN_FAILS") == "1" or os.path.exists(os.path.join(STATE, "down-fails"))


def down(args):
    cluster = [a for a in args if not a.startswith("-")][0]
    cancel_requests(cluster)
    pids_file = os.path.join(STATE, f"{cluster}.pids")
    status_file = os.path.join(STATE, f"{cluster}.status")
    if not os.path.exists(pids_file) and not os.path.exists(status_file):
        # The API server's log line (sky/backends/backend_utils.py:4089), then the CLI's answer
        # when no cluster matched (sky/client/cli/command.py:3852-3854); exit 0.
        print(f"Cluster(s) not found: \x1b[1m{cluster}\x1b[0m.")
        print("Cluster(s) not found (tip: see `sky status`).")
        return
    print("")  # sky/client/cli/command.py:3966
    # A real teardown takes minutes; a file named `down-slow` in FAKE_SKY_STATE holding a number
    # of seconds makes every `sky down` take that long.
    slow = os.path.join(STATE, "down-slow")
    if os.path.exists(slow):
        with open(slow) as f:
            time.sleep(float(f.read().strip() or "0"))
    if down_fails():
        # A teardown that raised RuntimeError (sky/client/cli/command.py:3934-3938; the reason
        # is the lock error of sky/backends/cloud_vm_ray_backend.py:4805-4807), then the
        # summary (command.py:3998-4004). Nothing is removed, and the CLI still exits 0.
        print(f"Terminating cluster {cluster}...failed. ")
        print(f"Reason: RuntimeError: Cluster '{cluster}' is locked by {cluster}_status. "
              "Check to see if it is still being launched.")
        print("Cluster(s) failed. See details above. If you want to ignore the errors and remove "
              "the cluster(s) from the status table, use `sky down --purge`.")
        return
    if os.path.exists(pids_file):
        with open(pids_file) as f:
            pids = json.load(f)
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        os.remove(pids_file)
        ledger("down", cluster, pids)
    set_status(cluster, None)
    print(f"Terminating cluster {cluster}...done.")  # sky/client/cli/command.py:3945-3948


# `sky check`'s reasons for a disabled cloud, as SkyPilot 0.14.1 printed them on a machine
# without cloud credentials (../shared/fixtures/skypilot/02-sky-check.txt).
CHECK_REASONS = {
    "AWS": [
        "    Reason [compute, storage]: AWS dependencies are not installed. Run the following commands:",
        "      $ pip install skypilot[aws]",
        "    Credentials may also need to be set. Run the following commands:",
        "      $ aws configure",
        "      $ aws configure list  # Ensure that this shows identity is set.",
    ],
    "Azure": [
        "    Reason [compute, storage]: ~/.azure/msal_token_cache.json does not exist. Run the following commands:",
        "      $ az login",
        "      $ az account set -s <subscription_id>",
    ],
    "GCP": [
        "    Reason [compute, storage]: GCP tools are not installed. Run the following commands:",
        "      $ pip install google-api-python-client",
        "      $ conda install -c conda-forge google-cloud-sdk -y",
    ],
}
CHECK_NAMES = {"aws": "AWS", "azure": "Azure", "gcp": "GCP"}


def check(args):
    """`sky check [CLOUD...]` as SkyPilot 0.14.1 prints it (sky/check.py): one line per cloud
    checked, `enabled [capabilities]` or `disabled` with its reasons, then the summary of the
    enabled infra. The clouds in FAKE_SKY_ENABLED_CLOUDS (comma-separated) are enabled, or those in
    a file named `enabled-clouds` in FAKE_SKY_STATE while it exists. Exit 0
    whatever is enabled, like the real command."""
    listed = os.environ.get("FAKE_SKY_ENABLED_CLOUDS", "")
    override = os.path.join(os.environ["FAKE_SKY_STATE"], "enabled-clouds")
    if os.path.exists(override):
        with open(override) as f:
            listed = f.read()
    enabled = {c.strip().lower() for c in listed.split(",") if c.strip()}
    asked = [a.lower() for a in args if not a.startswith("-")] or list(CHECK_NAMES)
    dim, green, reset = "\x1b[2m", "\x1b[32m", "\x1b[0m"
    print("Checking credentials to enable infra for SkyPilot.")
    for cloud in asked:
        name = CHECK_NAMES.get(cloud, cloud)
        if cloud in enabled:
            print(f"{green}  {name}: enabled [compute, storage]{reset}")
        else:
            print(f"{dim}  {name}: disabled {reset}{reset}")
            for line in CHECK_REASONS.get(name, []):
                print(line)
    print()
    print(f"{green}\U0001F389 Enabled infra \U0001F389{reset}")
    if enabled:
        for cloud in sorted(enabled):
            print(f"  {green}{CHECK_NAMES.get(cloud, cloud)} [compute, storage]{reset}")
    else:
        print("  No infra to check/enabled.")
        print("To enable a cloud, follow the hints above and rerun: sky check")


def main():
    args = sys.argv[1:]
    if args[:1] == ["_request"]:
        run_request(*args[1:3])
        return
    record(args)
    if args[:1] == ["--version"]:
        print("skypilot, version 0.14.1")
    elif args[:1] == ["check"]:
        check(args[1:])
    elif args[:1] == ["launch"]:
        launch(args[1:])
    elif args[:1] == ["status"]:
        status(args[1:])
    elif args[:1] == ["down"]:
        down(args[1:])
    else:
        print(f"fake sky: unsupported command {args}", file=sys.stderr)
        sys.exit(2)


main()
