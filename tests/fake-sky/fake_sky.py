"""A stand-in for SkyPilot 0.14's `sky` CLI in tests, where no cloud VM can exist.

It behaves like the CLI at its edges:
- `sky launch -y -c NAME --detach-run TASK` replays a recorded transcript (stdout, then stderr,
  with pacing) and exits with the transcript's exit code; an unknown option is a click usage
  error (exit 2). Like the real CLI, the client only follows a *request* that runs on its own
  (SkyPilot's API server, reference §0.5): killing the client, or the process that started it,
  does not stop the launch. The request holds the cluster's lock while it runs, the cluster is
  INIT from its start and UP once launched. When the transcript is a successful launch, it
  plays the VM's part: it reads the task like SkyPilot would and starts the real node agent with
  the task's `envs` and `secrets`, next to skylaunch's echo model server.
- `sky status [NAME]` prints the clusters table with each cluster's status.
- `sky down -y NAME` waits for the cluster's lock (behind a running launch, as SkyPilot parks it)
  and stops that "VM".
Every call is appended to $FAKE_SKY_STATE/calls.log as JSON; every VM started or stopped to
$FAKE_SKY_STATE/vms.log, so a test can tell whether a cluster ever had two VMs.

Environment: FAKE_SKY_STATE (dir), FAKE_SKY_TRANSCRIPT (file), FAKE_SKY_DELAY_S (per line,
default 0.01), FAKE_SKY_HANG=1 (never exit after the stdout part, like a launch stuck retrying;
that launch runs in the client itself and holds no cluster lock, so tests can cancel it),
FAKE_SKY_SKYLAUNCH_BIN and FAKE_SKY_AGENT_BIN (for the "VM").
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
    """SkyPilot's per-cluster lock: held by a running launch, waited for by `sky down`."""
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
    echo = subprocess.Popen([os.environ["FAKE_SKY_SKYLAUNCH_BIN"], "echo-server", "--listen", f"127.0.0.1:{port}",
                             "--model", envs["MODEL_ID"]], **quiet)
    agent_env = {
        "PATH": os.environ.get("PATH", ""),
        "SKYLAUNCH_CONTROL_PLANE_URL": envs["SKYLAUNCH_CONTROL_PLANE_URL"],
        "SKYLAUNCH_NODE_ID": envs["SKYLAUNCH_NODE_ID"],
        "SKYLAUNCH_NODE_TOKEN": secrets["SKYLAUNCH_NODE_TOKEN"],
        "SKYLAUNCH_MODEL_SERVER_URL": url,
        "SKYLAUNCH_MODEL_NAME": envs["MODEL_ID"],
        "SKYLAUNCH_ENDPOINT_URL": url,
        "SKYLAUNCH_PROVIDER": "aws",
        "SKYLAUNCH_REGION": "us-east-1",
        "SKYLAUNCH_ZONE": "us-east-1a",
        "SKYLAUNCH_INSTANCE_TYPE": "g6.xlarge",
        "SKYLAUNCH_GPU_TYPE": "L4",
        "SKYLAUNCH_SPOT_INSTANCE": "true",
        "SKYLAUNCH_IMDS_URL": "http://127.0.0.1:9",
        "SKYLAUNCH_NVIDIA_SMI": "/nonexistent/nvidia-smi",
    }
    # The "VM's disk": the agent's output and its own copy of the token, so tests can check the
    # token appears nowhere else.
    with open(os.path.join(STATE, f"{cluster}.token"), "w") as f:
        f.write(secrets["SKYLAUNCH_NODE_TOKEN"])
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
    code, out, err = transcript(os.environ["FAKE_SKY_TRANSCRIPT"])
    delay = float(os.environ.get("FAKE_SKY_DELAY_S", "0.01"))
    if os.environ.get("FAKE_SKY_HANG") == "1":
        for line in out:
            print(line, flush=True)
            time.sleep(delay)
        while True:
            time.sleep(3600)
    # The client uploads the task with the request (the API server keeps its own copy), then
    # follows the request's output until it ends.
    with open(task_path) as f:
        task = yaml.safe_load(f)
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


def run_request(cluster, request):
    """The launch as SkyPilot's API server runs it: on its own, whatever happens to the client."""
    code, out, err = transcript(os.environ["FAKE_SKY_TRANSCRIPT"])
    delay = float(os.environ.get("FAKE_SKY_DELAY_S", "0.01"))
    with open(request + ".task.json") as f:
        task = json.load(f)
    os.remove(request + ".task.json")
    lock = cluster_lock(cluster)
    set_status(cluster, "INIT")
    with open(request + ".out", "a") as f:
        for line in out:
            f.write(line + "\n")
            f.flush()
            time.sleep(delay)
    if code == 0:
        start_vm(task, cluster)
        set_status(cluster, "UP")
    elif not os.path.exists(os.path.join(STATE, f"{cluster}.pids")):
        set_status(cluster, None)  # a failed provision removes what it made
    with open(request + ".err", "w") as f:
        f.writelines(line + "\n" for line in err)
    with open(request + ".exit.tmp", "w") as f:
        f.write(str(code))
    os.replace(request + ".exit.tmp", request + ".exit")
    lock.close()


def status(args):
    names = [a for a in args if not a.startswith("-")]
    rows = []
    for entry in sorted(os.listdir(STATE)):
        if entry.endswith(".status"):
            name = entry[: -len(".status")]
            if not names or name in names:
                with open(os.path.join(STATE, entry)) as f:
                    rows.append((name, f.read().strip()))
    print("Clusters")
    if not rows:
        print("No existing clusters." if not names else f"Cluster(s) not found: {', '.join(names)}.")
    else:
        width = max(len("NAME"), *(len(n) for n, _ in rows)) + 2
        print(f"{'NAME':<{width}}INFRA            RESOURCES                                   STATUS  AUTOSTOP  LAUNCHED")
        for name, st in rows:
            print(f"{name:<{width}}AWS (us-east-1)  1x(gpus=L4:1, g6.xlarge, cpus=4, mem=16, ...)  {st:<8}-         1 min ago")
    print("")
    print("Managed jobs")
    print("No in-progress managed jobs.")
    print("")
    print("Services")
    print("No live services.")


def down(args):
    cluster = [a for a in args if not a.startswith("-")][0]
    lock = cluster_lock(cluster)
    pids_file = os.path.join(STATE, f"{cluster}.pids")
    if not os.path.exists(pids_file):
        set_status(cluster, None)
        print(f"Cluster(s) not found: {cluster}.", file=sys.stderr)
        sys.exit(0)
    with open(pids_file) as f:
        pids = json.load(f)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    os.remove(pids_file)
    set_status(cluster, None)
    ledger("down", cluster, pids)
    lock.close()
    print(f"Terminating cluster {cluster}...done.")


def main():
    args = sys.argv[1:]
    if args[:1] == ["_request"]:
        run_request(*args[1:3])
        return
    record(args)
    if args[:1] == ["launch"]:
        launch(args[1:])
    elif args[:1] == ["status"]:
        status(args[1:])
    elif args[:1] == ["down"]:
        down(args[1:])
    else:
        print(f"fake sky: unsupported command {args}", file=sys.stderr)
        sys.exit(2)


main()
