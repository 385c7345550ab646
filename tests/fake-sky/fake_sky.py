"""A stand-in for SkyPilot 0.14's `sky` CLI in tests, where no cloud VM can exist.

It behaves like the CLI at its edges: `sky launch -y -c NAME --detach-run TASK` replays a recorded
transcript (stdout, then stderr, with pacing) and exits with the transcript's exit code; an
unknown option is a click usage error (exit 2). When the transcript is a successful launch, it
plays the VM's part: it reads the task file like SkyPilot would and starts the real node agent
with the task's `envs` and `secrets`, next to skylaunch's echo model server. `sky down -y NAME`
stops that "VM". Every call is appended to $FAKE_SKY_STATE/calls.log as JSON.

Environment: FAKE_SKY_STATE (dir), FAKE_SKY_TRANSCRIPT (file), FAKE_SKY_DELAY_S (per line,
default 0.01), FAKE_SKY_HANG=1 (never exit after the stdout part, like a launch stuck retrying),
FAKE_SKY_SKYLAUNCH_BIN and FAKE_SKY_AGENT_BIN (for the "VM").
"""
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


def start_vm(task_path, cluster):
    with open(task_path) as f:
        task = yaml.safe_load(f)
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
    for line in out:
        print(line, flush=True)
        time.sleep(delay)
    if os.environ.get("FAKE_SKY_HANG") == "1":
        while True:
            time.sleep(3600)
    if code == 0:
        start_vm(task_path, cluster)
    for line in err:
        print(line, file=sys.stderr, flush=True)
    sys.exit(code)


def down(args):
    cluster = [a for a in args if not a.startswith("-")][0]
    pids_file = os.path.join(STATE, f"{cluster}.pids")
    if not os.path.exists(pids_file):
        print(f"Cluster(s) not found: {cluster}.", file=sys.stderr)
        sys.exit(0)
    with open(pids_file) as f:
        for pid in json.load(f):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    os.remove(pids_file)
    print(f"Terminating cluster {cluster}...done.")


def main():
    args = sys.argv[1:]
    record(args)
    if args[:1] == ["launch"]:
        launch(args[1:])
    elif args[:1] == ["down"]:
        down(args[1:])
    else:
        print(f"fake sky: unsupported command {args}", file=sys.stderr)
        sys.exit(2)


main()
