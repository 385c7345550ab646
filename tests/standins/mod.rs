//! Stand-ins for what cannot run here, built from the real binaries: this machine playing a
//! launched VM (the built `skylaunch` and `skylaunch-agent`), and a `sky` that replays a recorded
//! SkyPilot 0.14.1 transcript with pacing (tests/fake-sky/fake_sky.py) and, on success, plays the
//! VM by starting the real agent and echo model server; and `skylaunch doctor` run with only
//! the environment a test gives it.
#![allow(dead_code)]

pub mod doctor;

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

/// A control plane whose local provider runs the built binaries (the real agent and echo model
/// server), with the short lease and reconcile pass (200 ms) the deployment tests share, then
/// `tweak`ed. `None` when the database is not available here (after a loud message).
pub async fn local_app(
    backend: crate::common::Backend,
    tweak: impl FnOnce(&mut skylaunch::config::ServeConfig),
) -> Option<crate::common::TestApp> {
    let db = crate::common::TestDb::new(backend).await?;
    let mut config = crate::common::test_config(&db);
    let (skylaunch, agent) = binaries();
    config.skylaunch_bin = Some(skylaunch);
    config.agent_bin = Some(agent);
    config.job_lease = std::time::Duration::from_secs(3);
    config.reconcile_interval = std::time::Duration::from_millis(200);
    tweak(&mut config);
    Some(crate::common::TestApp::start(db, config).await)
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

/// A real `skylaunch serve` process on 127.0.0.1 with its output (at `RUST_LOG=debug`) in a
/// file, for tests that check what it logs: the settings every such test needs, plus `envs`.
pub struct DebugServer {
    pub child: tokio::process::Child,
    pub base: String,
    pub output: PathBuf,
    pub client: reqwest::Client,
}

impl DebugServer {
    pub async fn start(data: &Path, envs: &[(&str, &str)]) -> DebugServer {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let output = data.join("serve.log");
        let log = std::fs::File::create(&output).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_skylaunch"));
        cmd.arg("serve")
            .env("SKYLAUNCH_LISTEN", format!("127.0.0.1:{port}"))
            .env("SKYLAUNCH_DATA_DIR", data)
            .env("SKYLAUNCH_ADMIN_TOKEN", crate::common::ADMIN_TOKEN)
            .env("SKYLAUNCH_HEARTBEAT_INTERVAL", "1s")
            // Stand-in machines run on this one: their model servers are on loopback.
            .env("SKYLAUNCH_ALLOW_LOOPBACK_ENDPOINTS", "true")
            .env("RUST_LOG", "debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        for (key, value) in envs {
            cmd.env(key, value);
        }
        let server = DebugServer {
            child: cmd.spawn().unwrap(),
            base,
            output,
            client: reqwest::Client::new(),
        };
        for _ in 0..100 {
            if server
                .call(reqwest::Method::GET, "/healthz")
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        server
    }

    /// A request with the admin token.
    pub fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(crate::common::ADMIN_TOKEN)
    }

    /// GET `path` as text.
    pub async fn text(&self, path: &str) -> String {
        self.call(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls GET `path` (up to about 90 s) until `done` holds for its JSON; returns it.
    pub async fn wait(
        &self,
        path: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        for _ in 0..900 {
            last = serde_json::from_str(&self.text(path).await).unwrap_or_default();
            if done(&last) {
                return last;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{path} never got there: {last:#}");
    }

    /// Stops the process; returns everything it printed.
    pub async fn stop(mut self) -> String {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
        std::fs::read_to_string(&self.output).unwrap()
    }
}
