//! Runs `sky launch -y -c <cluster> --detach-run <task>` (SkyPilot 0.14) under `tokio::process`,
//! with stdin closed and `PYTHONUNBUFFERED=1`, reading stdout and stderr line by line as they come.
//! The parser turns the lines into stages and attempts; a non-zero exit is explained by the error
//! mapper. The task file holds the node token (a SkyPilot secret), so it is private to the
//! process and deleted once `sky launch` returns.
//!
//! A launch taken over from a stopped process asks `sky status <cluster>` first: the stopped
//! process's launch goes on inside SkyPilot's API server, so a cluster that is INIT or UP is that
//! launch, and its agent will register with the token it was given.
//!
//! Cancelling kills the whole `sky` process group, but that alone does not stop a SkyPilot
//! launch: the `sky` command is only a client, and the request keeps running inside SkyPilot's
//! API server. Teardown therefore always runs `sky down -y <cluster>`, which does not wait
//! behind the running launch: it cancels the cluster's other requests, force-unlocks the cluster
//! and removes whatever the launch created (`sky/backends/cloud_vm_ray_backend.py:4765-4784`).
//! `sky down` exits 0 even when the teardown failed, so its outcome is read from SkyPilot's own
//! lines ([`super::cluster::down_outcome`]); a teardown that did not say it removed the cluster
//! is an error, never a success.

use std::collections::BTreeSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::cluster::{cluster_status, down_outcome, ClusterListing, DownOutcome};
use super::explain::{explain, teardown_failed, FailureContext};
use super::parse::{SkyEvent, SkyOutputParser, Stream};
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::job::Job;
use crate::launch::providers::{BoxFuture, LaunchProvider};
use crate::launch::run::JobRun;
use crate::launch::stage::{AttemptOutcome, Stage};

pub struct SkypilotProvider {
    pub sky_bin: String,
    /// Where task files are written (inside the data dir).
    pub work_dir: PathBuf,
    /// How long `sky down` may take.
    pub teardown_timeout: Duration,
}

/// The `sky` process groups this process started and has not seen end. Only these may be killed
/// by the group id stored in a job: after a restart that id may name someone else's processes.
static OUR_GROUPS: std::sync::Mutex<BTreeSet<u32>> = std::sync::Mutex::new(BTreeSet::new());

/// Kills a process group of ours when dropped (a cancelled launch drops the future that owns it).
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn started(pgid: Option<u32>) -> GroupGuard {
        if let Some(pgid) = pgid {
            OUR_GROUPS.lock().expect("process groups").insert(pgid);
        }
        GroupGuard(pgid)
    }

    /// The group ended by itself: nothing to kill.
    fn ended(mut self) {
        if let Some(pgid) = self.0.take() {
            OUR_GROUPS.lock().expect("process groups").remove(&pgid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            if OUR_GROUPS.lock().expect("process groups").remove(&pgid) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pgid}")])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Deletes the task file (it holds the node token) however the launch ends.
struct FileGuard(PathBuf);

impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl LaunchProvider for SkypilotProvider {
    fn launch<'a>(&'a self, run: &'a JobRun) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(self.sky_launch(run))
    }

    fn readiness(
        &self,
        kind: crate::launch::providers::Provider,
    ) -> BoxFuture<'_, crate::launch::providers::readiness::Readiness> {
        Box::pin(self.check_readiness(kind))
    }

    fn readiness_asks_the_cloud(&self) -> bool {
        true
    }

    fn teardown<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(self.sky_down(job))
    }

    fn still_launching<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<bool, LaunchError>> {
        Box::pin(self.cluster_exists(job))
    }
}

impl SkypilotProvider {
    fn write_task_file(&self, job_id: &str, yaml: &str) -> Result<FileGuard, LaunchError> {
        let failed = |e: std::io::Error| {
            LaunchError::new(
                ErrorCode::Internal,
                "Could not write the task file",
                e.to_string(),
            )
        };
        std::fs::create_dir_all(&self.work_dir).map_err(failed)?;
        let path = self.work_dir.join(format!("{job_id}.task.yaml"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(failed)?;
        std::io::Write::write_all(&mut file, yaml.as_bytes()).map_err(failed)?;
        Ok(FileGuard(path))
    }

    async fn sky_launch(&self, run: &JobRun) -> Result<(), LaunchError> {
        let job = run.snapshot().await;
        let task_file = self.write_task_file(&job.id, run.rendered_task())?;
        // Remembered before anything starts, so a teardown after a crash knows the cluster.
        run.set_provider_state(json!({"cluster": job.cluster_name}))
            .await;
        run.stage(
            Stage::Provision,
            Some("sky launch: looking for resources".into()),
        )
        .await;
        let mut cmd = Command::new(&self.sky_bin);
        crate::launch::providers::child_env::apply(&mut cmd);
        cmd.args(["launch", "-y", "-c", &job.cluster_name, "--detach-run"])
            .arg(&task_file.0)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            LaunchError::new(
                ErrorCode::ProviderUnavailable,
                "SkyPilot is not installed here",
                format!("could not run {:?}: {e}", self.sky_bin),
            )
            .suggest("Install SkyPilot on the control-plane host (pip install \"skypilot[aws]==0.14.1\") or set SKYLAUNCH_SKY_BIN")
            .suggest("Or launch with provider \"local\" to try skylaunch without a cloud")
        })?;
        let guard = GroupGuard::started(child.id());
        run.set_provider_state(json!({"cluster": job.cluster_name, "sky_pgid": child.id()}))
            .await;

        let (tx, mut rx) = mpsc::channel::<(Stream, String)>(1024);
        for (stream, reader) in [
            (
                Stream::Stdout,
                child
                    .stdout
                    .take()
                    .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            ),
            (
                Stream::Stderr,
                child
                    .stderr
                    .take()
                    .map(|e| Box::new(e) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            ),
        ] {
            let Some(reader) = reader else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send((stream, line)).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);

        let mut parser = SkyOutputParser::new();
        while let Some((stream, line)) = rx.recv().await {
            let clean = super::parse::strip_ansi(&line);
            let name = if stream == Stream::Stdout {
                "stdout"
            } else {
                "stderr"
            };
            if !clean.trim().is_empty() {
                run.log.line(name, &clean).await;
            }
            for event in parser.feed(stream, &line) {
                match event {
                    SkyEvent::StageActive { stage, detail } => run.stage(stage, detail).await,
                    SkyEvent::AttemptStarted(attempt) => {
                        let detail = format!(
                            "trying {} {}{}{}",
                            attempt.cloud,
                            attempt.region.as_deref().unwrap_or(""),
                            attempt
                                .zone
                                .as_deref()
                                .map(|z| format!(" ({z})"))
                                .unwrap_or_default(),
                            if attempt.market == crate::launch::stage::Market::Spot {
                                ", spot"
                            } else {
                                ", on-demand"
                            },
                        );
                        run.attempt_started(attempt).await;
                        run.stage(Stage::Provision, Some(detail)).await;
                    }
                    SkyEvent::AttemptFailed { reason } => {
                        run.attempt_finished(AttemptOutcome::Failed, Some(reason))
                            .await
                    }
                    SkyEvent::Detail(text) => run.log.line("skylaunch", &text).await,
                    SkyEvent::JobFinished { status } => {
                        run.log
                            .line("skylaunch", &format!("job finished: {status}"))
                            .await
                    }
                }
            }
        }
        let status = child.wait().await.map_err(|e| {
            LaunchError::new(
                ErrorCode::Internal,
                "Lost track of sky launch",
                e.to_string(),
            )
        })?;
        guard.ended();
        drop(task_file);
        if status.success() {
            if let Some(last) = run.snapshot().await.attempts.last() {
                if last.outcome == AttemptOutcome::Trying {
                    run.attempt_finished(AttemptOutcome::Succeeded, None).await;
                }
            }
            return Ok(());
        }
        if let Some(last) = run.snapshot().await.attempts.last() {
            if last.outcome == AttemptOutcome::Trying {
                run.attempt_finished(
                    AttemptOutcome::Failed,
                    parser.failure_reasons().last().cloned(),
                )
                .await;
            }
        }
        let gpu = job.spec.gpu.clone().unwrap_or_default();
        let ctx = FailureContext {
            gpu: &gpu,
            regions: &job.spec.regions,
            use_spot: job.spec.use_spot,
        };
        Err(explain(
            status.code(),
            parser.stderr(),
            parser.failure_reasons(),
            &parser.tail(30),
            &ctx,
        ))
    }

    /// Runs a short `sky` command (`status`, `down`) to its end, for at most the teardown
    /// timeout. `Err(None)`: it did not finish in time; `Err(Some(_))`: it could not be run.
    pub(super) async fn sky_output(
        &self,
        args: &[&str],
    ) -> Result<std::process::Output, Option<std::io::Error>> {
        let mut cmd = Command::new(&self.sky_bin);
        crate::launch::providers::child_env::apply(&mut cmd);
        let run = cmd
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(self.teardown_timeout, run).await {
            Ok(out) => out.map_err(Some),
            Err(_) => Err(None),
        }
    }

    /// Whether SkyPilot has the job's cluster, as INIT (being launched) or UP. `sky status NAME`
    /// exits 0 whatever it finds, so an output with neither the cluster's row nor its not-found
    /// line is an error, not "no cluster".
    async fn cluster_exists(&self, job: &Job) -> Result<bool, LaunchError> {
        let Some(cluster) = job.provider_state["cluster"].as_str() else {
            return Ok(false);
        };
        let unavailable = |why: String| {
            LaunchError::new(
                ErrorCode::ProviderUnavailable,
                "Could not ask SkyPilot about the cluster",
                format!("`sky status {cluster}` {why}"),
            )
        };
        let out = self.sky_output(&["status", cluster]).await.map_err(|e| {
            unavailable(match e {
                None => "did not answer in time".into(),
                Some(e) => format!("could not run: {e}"),
            })
        })?;
        if !out.status.success() {
            return Err(unavailable(format!(
                "failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let listing = cluster_status(&String::from_utf8_lossy(&out.stdout), cluster);
        tracing::info!(job_id = %job.id, cluster, listing = ?listing, "asked SkyPilot about a stopped launch's cluster");
        match listing {
            ClusterListing::Listed(status) => Ok(matches!(status, "INIT" | "UP")),
            ClusterListing::NotFound => Ok(false),
            ClusterListing::Unclear => Err(unavailable(format!(
                "printed neither the cluster's row nor `Cluster '{cluster}' not found.` (last line: {:?})",
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(super::parse::strip_ansi)
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or_default()
            ))),
        }
    }

    async fn sky_down(&self, job: &Job) -> Result<(), LaunchError> {
        if let Some(pgid) = job.provider_state["sky_pgid"].as_u64() {
            drop(GroupGuard(Some(pgid as u32)));
        }
        let Some(cluster) = job.provider_state["cluster"].as_str() else {
            return Ok(());
        };
        let out = match self.sky_output(&["down", "-y", cluster]).await {
            Ok(out) => out,
            Err(None) => return Err(LaunchError::new(
                ErrorCode::ProviderUnavailable,
                "Teardown timed out",
                format!("`sky down -y {cluster}` did not finish in time; check `sky status` and remove the cluster by hand"),
            )),
            Err(Some(e)) => return Err(LaunchError::new(ErrorCode::ProviderUnavailable, "Could not run sky down", e.to_string())),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match down_outcome(cluster, out.status.code(), &stdout, &stderr) {
            DownOutcome::Removed => {
                tracing::info!(job_id = %job.id, cluster, "cluster torn down");
                Ok(())
            }
            DownOutcome::AlreadyGone => {
                tracing::info!(job_id = %job.id, cluster, "cluster already gone: nothing to tear down");
                Ok(())
            }
            DownOutcome::Failed { reason } => {
                let tail: Vec<String> = stdout
                    .lines()
                    .chain(stderr.lines())
                    .map(super::parse::strip_ansi)
                    .collect();
                tracing::warn!(job_id = %job.id, cluster, %reason, "sky down did not remove the cluster");
                Err(teardown_failed(cluster, &reason, &tail))
            }
        }
    }
}
