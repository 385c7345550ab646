//! `provider: "local"`: runs the node on this machine so the whole flow can be tried without a
//! cloud account. It starts the built-in echo model server (an OpenAI-compatible stand-in, since
//! no vLLM is installed here) and the real node agent, each in its own process group, with the
//! same stages as a cloud launch. Teardown stops both groups, also after a control-plane crash
//! (their process-group ids are stored with the job).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::{BoxFuture, LaunchProvider, RequestChecks};
use crate::catalog::Gpu;
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::job::Job;
use crate::launch::run::{JobLog, JobRun};
use crate::launch::spec::SpecError;
use crate::launch::stage::{Attempt, AttemptOutcome, Market, Stage};

/// The request checks of `provider: "local"`: this machine, so no GPU needed, no cloud, no
/// regions and no spot.
pub struct LocalRequests;

impl RequestChecks for LocalRequests {
    fn needs_gpu(&self) -> bool {
        false
    }

    fn offers_spot(&self) -> bool {
        false
    }

    fn templates(&self) -> &'static [&'static str] {
        &["vllm", "echo"]
    }

    fn cloud(
        &self,
        asked: Option<&str>,
        _gpu: Option<&'static Gpu>,
        _gpu_count: u32,
    ) -> Result<Option<String>, SpecError> {
        super::no_cloud(asked, "the local provider runs on this machine")
    }

    fn regions(&self, asked: &[String], _cloud: Option<&str>) -> Result<Vec<String>, SpecError> {
        super::no_regions(asked, &["local"], "the local provider runs on this machine")
    }
}

pub struct LocalProvider {
    /// The `skylaunch` executable (it serves the echo model server as a subcommand).
    pub skylaunch_bin: PathBuf,
    pub agent_bin: PathBuf,
}

impl LaunchProvider for LocalProvider {
    /// Always ready when the agent is where launches look for it (the echo model server is
    /// this binary).
    fn readiness(&self, kind: super::Provider) -> BoxFuture<'_, super::readiness::Readiness> {
        Box::pin(async move {
            let mut r = super::readiness::Readiness::of(kind);
            if self.agent_bin.is_file() {
                r.passed("agent", format!("{}", self.agent_bin.display()));
            } else {
                r.failed(
                    "agent",
                    LaunchError::new(
                        crate::launch::failure::ErrorCode::ProviderUnavailable,
                        "The node agent binary is missing",
                        format!(
                            "Local launches start the agent from {}, which does not exist.",
                            self.agent_bin.display()
                        ),
                    )
                    .suggest("Build it beside skylaunch: `cargo build --release --workspace`")
                    .suggest("Or point --agent-bin (SKYLAUNCH_AGENT_BIN) at it"),
                );
            }
            r.done("this machine: the echo model server, no GPU")
        })
    }

    fn launch<'a>(&'a self, run: &'a JobRun) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(self.launch_local(run))
    }

    fn teardown<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(async move {
            let groups: Vec<u32> = job.provider_state["process_groups"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_u64())
                        .map(|v| v as u32)
                        .collect()
                })
                .unwrap_or_default();
            for pgid in groups {
                // A recorded group id may since belong to someone else (after a reboot, say):
                // only a group this launch started, as its environment says, is stopped.
                if started_for(pgid, &job.id) {
                    stop_group(pgid).await;
                } else {
                    tracing::info!(job_id = %job.id, pgid, "a recorded process group is not this launch's (gone, or reused): left alone");
                }
            }
            Ok(())
        })
    }
}

impl LocalProvider {
    async fn launch_local(&self, run: &JobRun) -> Result<(), LaunchError> {
        let job = run.snapshot().await;
        run.stage(Stage::Provision, Some("starting on this machine".into()))
            .await;
        run.attempt_started(Attempt {
            cloud: "local".into(),
            region: Some("local".into()),
            zone: None,
            instance_type: Some("this machine".into()),
            market: Market::OnDemand,
            price_per_hour: Some(0.0),
            outcome: AttemptOutcome::Trying,
            reason: None,
        })
        .await;
        for (what, path) in [
            ("skylaunch", &self.skylaunch_bin),
            ("skylaunch-agent", &self.agent_bin),
        ] {
            if !path.is_file() {
                let error = LaunchError::new(
                    ErrorCode::ProviderUnavailable,
                    format!("{what} binary not found"),
                    format!("the local provider needs {what} at {}", path.display()),
                )
                .suggest("Build the workspace (cargo build --release --workspace) so both binaries sit side by side, or set SKYLAUNCH_AGENT_BIN");
                run.attempt_finished(AttemptOutcome::Failed, Some(error.message.clone()))
                    .await;
                return Err(error);
            }
        }
        let port = free_port().map_err(|e| {
            LaunchError::new(
                ErrorCode::ProviderUnavailable,
                "No free local port",
                e.to_string(),
            )
        })?;
        run.attempt_finished(AttemptOutcome::Succeeded, None).await;
        run.stage(Stage::InstanceUp, Some("this machine".into()))
            .await;
        run.stage(
            Stage::Setup,
            Some(
                "nothing to install: using skylaunch's built-in echo model server (no vLLM here)"
                    .into(),
            ),
        )
        .await;
        run.stage(
            Stage::StartModelServer,
            Some(format!(
                "echo model server on 127.0.0.1:{port} for {}",
                job.spec.model
            )),
        )
        .await;
        let model_server_url = format!("http://127.0.0.1:{port}");
        let mut echo = Command::new(&self.skylaunch_bin);
        // Not the control plane's environment (admin token, API keys, database URL): only
        // what the model server needs.
        // The launch's envs are the model server's, as on a VM (the echo server reads
        // ECHO_DELAY_MS and ECHO_DELAY_PER_REQUEST_MS from them).
        echo.env_clear()
            .envs(&job.spec.envs)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(LAUNCH_MARK, &job.id)
            .env("SKYLAUNCH_MODEL_SERVER_KEY", run.model_key())
            .args([
                "echo-server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--model",
                &job.spec.model,
            ]);
        let echo_pgid = spawn_group(echo, "model_server", run.log.clone()).await?;
        run.set_provider_state(json!({"process_groups": [echo_pgid]}))
            .await;

        let node_id = job.node_id.clone().unwrap_or_default();
        let mut agent = Command::new(&self.agent_bin);
        agent
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SKYLAUNCH_CONTROL_PLANE_URL", &run.control_plane_url)
            .env("SKYLAUNCH_NODE_ID", &node_id)
            .env(LAUNCH_MARK, &job.id)
            .env("SKYLAUNCH_MODEL_SERVER_KEY", run.model_key())
            .env("SKYLAUNCH_NODE_TOKEN", run.node_token())
            .env("SKYLAUNCH_MODEL_SERVER_URL", &model_server_url)
            .env("SKYLAUNCH_MODEL_NAME", &job.spec.model)
            .env("SKYLAUNCH_PROVIDER", "local")
            .env("SKYLAUNCH_REGION", "local")
            .env("SKYLAUNCH_INSTANCE_TYPE", "local")
            .env("SKYLAUNCH_ENDPOINT_URL", &model_server_url);
        let agent_pgid = spawn_group(agent, "agent", run.log.clone()).await?;
        run.set_provider_state(json!({"process_groups": [echo_pgid, agent_pgid]}))
            .await;
        Ok(())
    }
}

/// The variable every process a local launch starts carries, with the job's id: teardown
/// checks it before stopping a recorded process group (SkyPilot teardown has the same guard
/// on the groups it started).
const LAUNCH_MARK: &str = "SKYLAUNCH_LOCAL_JOB";

/// Whether the leader of process group `pgid` was started by the launch `job_id`.
fn started_for(pgid: u32, job_id: &str) -> bool {
    let mark = format!("{LAUNCH_MARK}={job_id}");
    std::fs::read(format!("/proc/{pgid}/environ"))
        .is_ok_and(|environ| environ.split(|b| *b == 0).any(|var| var == mark.as_bytes()))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts a process in a new process group, copies its output into the job log, and reaps it.
async fn spawn_group(
    mut cmd: Command,
    stream: &'static str,
    log: JobLog,
) -> Result<u32, LaunchError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        LaunchError::new(
            ErrorCode::ProviderUnavailable,
            format!("Could not start the {stream}"),
            e.to_string(),
        )
    })?;
    let pid = child.id().ok_or_else(|| {
        LaunchError::new(
            ErrorCode::ProviderUnavailable,
            format!("The {stream} exited at once"),
            "it ended before it could be watched",
        )
    })?;
    for reader in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.line(
                    stream,
                    &crate::launch::providers::skypilot::parse::strip_ansi(&line),
                )
                .await;
            }
        });
    }
    tokio::spawn(async move {
        let status = child.wait().await;
        let text = match status {
            Ok(s) => format!("{stream} exited ({s})"),
            Err(e) => format!("{stream}: could not wait for exit: {e}"),
        };
        log.line("skylaunch", &text).await;
    });
    Ok(pid)
}

/// SIGTERM to the whole group, then SIGKILL if it is still there after 5 s.
async fn stop_group(pgid: u32) {
    let group = format!("-{pgid}");
    let alive = || async {
        Command::new("kill")
            .args(["-0", "--", &group])
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success())
    };
    if !alive().await {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", "--", &group])
        .status()
        .await;
    for _ in 0..50 {
        if !alive().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .status()
        .await;
}
