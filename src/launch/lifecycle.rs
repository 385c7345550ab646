//! A launch's lifecycle once it is prepared: the provider launches the machine, the runner waits
//! for the node's agent to register and its model server to become healthy, then records the
//! outcome. On any failure or cancel it tears down first, so no machine keeps billing for a
//! launch that failed; a teardown that fails leaves the node in `teardown_pending`, retried by
//! [`TeardownRetrier`](super::teardown::TeardownRetrier).

use std::time::Duration;

use serde_json::json;

use super::events::JobEventKind;
use super::failure::{ErrorCode, LaunchError};
use super::job::{Job, JobStatus};
use super::run::{JobLog, JobRun};
use super::runner::{cancelled, lease_lost, JobRunner};
use super::stage::Stage;
use crate::clock::now_ms;
use crate::fleet::status::NodeStatus;

impl JobRunner {
    /// Has the provider launch the machine, then waits for the node to become ready; a cancel
    /// stops either step.
    pub(super) async fn launch_and_wait(&self, run: &JobRun) -> Result<(), LaunchError> {
        let job = run.snapshot().await;
        let provider = self.provider(job.provider).ok_or_else(|| {
            LaunchError::new(
                ErrorCode::InvalidRequest,
                "Provider not available",
                format!(
                    "provider {:?} is not available in this build",
                    job.provider.as_str()
                ),
            )
        })?;
        if !run.lease.confirm().await {
            return Err(lease_lost());
        }
        tokio::select! {
            r = provider.launch(run) => r?,
            _ = run.cancelled() => return Err(cancelled()),
        }
        tokio::select! {
            r = self.wait_for_ready(run) => r,
            _ = run.cancelled() => Err(cancelled()),
        }
    }

    /// Waits for the node's agent to register, then for the node to become ready, each within
    /// its timeout.
    pub(super) async fn wait_for_ready(&self, run: &JobRun) -> Result<(), LaunchError> {
        let job = run.snapshot().await;
        let node_id = job.node_id.clone().unwrap_or_default();
        run.stage(
            Stage::Register,
            Some("waiting for the node agent to register".into()),
        )
        .await;
        let started = tokio::time::Instant::now();
        let mut registered_at = None;
        loop {
            let node = self.fleet.get(&node_id).await.map_err(|e| {
                LaunchError::new(
                    ErrorCode::Internal,
                    "The node record is gone",
                    e.to_string(),
                )
            })?;
            match node.status {
                NodeStatus::Ready => return Ok(()),
                NodeStatus::Terminated => {
                    return Err(LaunchError::new(
                        ErrorCode::Cancelled,
                        "The node was deleted",
                        "the node was deleted while it was launching",
                    ))
                }
                NodeStatus::Registered
                | NodeStatus::Unhealthy
                | NodeStatus::Offline
                | NodeStatus::Draining
                    if registered_at.is_none() && node.registered_at.is_some() =>
                {
                    registered_at = Some(tokio::time::Instant::now());
                    run.stage(
                        Stage::Ready,
                        Some(
                            "agent registered; waiting for the model server to become healthy"
                                .into(),
                        ),
                    )
                    .await;
                }
                _ => {}
            }
            match registered_at {
                None if started.elapsed() >= self.settings.registration_timeout => {
                    return Err(LaunchError::new(
                        ErrorCode::RegistrationTimeout,
                        "The node agent never registered",
                        format!(
                            "the VM was started but its agent did not register within {}; the VM has been torn down",
                            crate::clock::fmt_duration(self.settings.registration_timeout)
                        ),
                    )
                    .suggest("Check that the VM can reach the control plane at SKYLAUNCH_PUBLIC_URL (firewall, security group, public address)")
                    .suggest("Look at the job's logs for setup errors (GET /admin/launch-jobs/<id>/logs)"));
                }
                Some(at) if at.elapsed() >= self.settings.ready_timeout => {
                    let why = node
                        .last_heartbeat
                        .as_ref()
                        .and_then(|hb| hb.model_server.as_ref())
                        .and_then(|m| m.error.clone())
                        .unwrap_or_else(|| node.status_reason.clone().unwrap_or_default());
                    return Err(LaunchError::new(
                        ErrorCode::ModelServerFailed,
                        "The model server never became healthy",
                        format!(
                            "the agent registered but the model server was not ready within {}: {why}",
                            crate::clock::fmt_duration(self.settings.ready_timeout)
                        ),
                    )
                    .suggest("Check the model id and that the GPU has enough memory for it")
                    .suggest("Gated models need HF_TOKEN in the launch's envs"));
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Records the outcome; on failure tears down first, so nothing is left billing. Does
    /// neither once another process holds the job: what is up is its machine now.
    pub(super) async fn finish(
        &self,
        mut job: Job,
        outcome: Result<(), LaunchError>,
        log: &JobLog,
    ) {
        if log.lease.is_lost() {
            return;
        }
        let now = now_ms();
        match outcome {
            Ok(()) => {
                job.succeed(now);
                tracing::info!(job_id = %job.id, "launch succeeded: node is ready");
            }
            Err(error) => {
                log.line(
                    "skylaunch",
                    &format!("launch failed: {} ({})", error.title, error.code.as_str()),
                )
                .await;
                if !log.lease.confirm().await {
                    return;
                }
                let mut torn_down = Ok(());
                if let Some(provider) = self.provider(job.provider) {
                    log.line("skylaunch", "tearing down what this launch created")
                        .await;
                    torn_down = provider.teardown(&job).await;
                }
                if let Err(e) = &torn_down {
                    log.line(
                        "skylaunch",
                        &format!(
                            "teardown failed: {} (retried until the machine is gone)",
                            e.message
                        ),
                    )
                    .await;
                    tracing::error!(job_id = %job.id, error = %e.message, "teardown failed; the node waits in teardown_pending and it is retried");
                }
                if let Some(node_id) = &job.node_id {
                    let reason = format!("launch {}: {}", job.id, error.title);
                    let _ = match &torn_down {
                        Ok(()) => self.fleet.terminate(node_id, &reason).await,
                        Err(e) => {
                            let reason = format!("{reason}; teardown failed: {}", e.message);
                            self.fleet.teardown_pending(node_id, &reason).await
                        }
                    };
                }
                let status = if error.code == ErrorCode::Cancelled {
                    JobStatus::Cancelled
                } else {
                    JobStatus::Failed
                };
                tracing::warn!(job_id = %job.id, code = error.code.as_str(), "launch did not succeed");
                job.finish_unsuccessfully(status, error, now);
            }
        }
        job.updated_at = now;
        if log.lease.save(&job).await {
            self.events.send(&job.id, JobEventKind::Job, json!(job));
        }
    }

    /// Tears down what a finished job created (when its node is deleted).
    pub async fn teardown(&self, job: &Job) -> Result<(), LaunchError> {
        match self.provider(job.provider) {
            Some(provider) => provider.teardown(job).await,
            None => Ok(()),
        }
    }
}
