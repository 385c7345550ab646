//! Stand-ins for what cannot run here, built from the real binaries: this machine playing a
//! launched VM (the built `skylaunch` and `skylaunch-agent`), and a `sky` that replays a recorded
//! SkyPilot 0.14.1 transcript with pacing (tests/fake-sky/fake_sky.py) and, on success, plays the
//! VM by starting the real agent and echo model server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The built `skylaunch` and `skylaunch-agent` binaries (the agent is built with the workspace).
pub fn binaries() -> (PathBuf, PathBuf) {
    let skylaunch = PathBuf::from(env!("CARGO_BIN_EXE_skylaunch"));
    let agent = skylaunch.with_file_name("skylaunch-agent");
    assert!(
        agent.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins` (scripts/test does)",
        agent.display()
    );
    (skylaunch, agent)
}

pub struct FakeSky {
    pub state: tempfile::TempDir,
    pub bin: PathBuf,
}

impl FakeSky {
    pub fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.state.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// How many VMs the stand-in ever started for `cluster` (its vms.log).
    pub fn vms_started(&self, cluster: &str) -> usize {
        std::fs::read_to_string(self.state.path().join("vms.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == "up" && v["cluster"] == cluster)
            .count()
    }
}

pub fn fixture(name: &str) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ours = here.join("tests/fixtures/skypilot").join(name);
    if ours.exists() {
        ours
    } else {
        here.join("../shared/fixtures/skypilot").join(name)
    }
}

/// Writes a `sky` executable that runs the fake with `transcript` and `extra` settings.
pub fn fake_sky(python: &Path, transcript: &str, extra: &[(&str, &str)]) -> FakeSky {
    let state = tempfile::tempdir().unwrap();
    let (skylaunch, agent) = binaries();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-sky/fake_sky.py");
    let mut env = format!(
        "export FAKE_SKY_STATE='{}' FAKE_SKY_TRANSCRIPT='{}' FAKE_SKY_SKYLAUNCH_BIN='{}' FAKE_SKY_AGENT_BIN='{}'\n",
        state.path().display(),
        fixture(transcript).display(),
        skylaunch.display(),
        agent.display()
    );
    for (k, v) in extra {
        env.push_str(&format!("export {k}='{v}'\n"));
    }
    let bin = state.path().join("sky");
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\n{env}exec '{}' '{}' \"$@\"\n",
            python.display(),
            script.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    FakeSky { state, bin }
}

/// Processes whose environment holds `var=value`, read from /proc.
pub fn processes_with_env(var: &str, value: &str) -> Vec<u32> {
    let needle = format!("{var}={value}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// Processes running the agent of `node_id`: the agent of every played VM has its node id in
/// its environment.
pub fn agents_of(node_id: &str) -> Vec<u32> {
    processes_with_env("SKYLAUNCH_NODE_ID", node_id)
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.to_string_lossy().contains("skylaunch-agent"))
        })
        .collect()
}

/// A port on 127.0.0.1 that was free a moment ago, for a process the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
