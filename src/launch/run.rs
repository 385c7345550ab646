//! One launch job while it runs, as providers see it: what to launch (the job, the task with
//! its real node token), how to report progress (stages, attempts, provider state, log lines,
//! each written to the database before it is sent to live watchers), and whether it was
//! cancelled.

use serde_json::json;
use tokio::sync::{watch, Mutex};

use super::events::JobEvents;
use super::job::Job;
use super::runner::RunnerSettings;
use super::stage::{Attempt, Stage};
use crate::clock::now_ms;
use crate::store::Store;

/// Writes a job's log lines and narrates them to watchers; cheap to clone into output readers.
#[derive(Clone)]
pub struct JobLog {
    pub(super) store: Store,
    pub(super) events: JobEvents,
    pub(super) job_id: String,
}

impl JobLog {
    pub async fn line(&self, stream: &str, line: &str) {
        let at = now_ms();
        if let Err(e) = self
            .store
            .append_logs(&self.job_id, &[(at, stream, line)])
            .await
        {
            tracing::error!(job_id = %self.job_id, error = %e, "could not store a log line");
            return;
        }
        self.events.send(
            &self.job_id,
            "log",
            json!({"at": crate::clock::rfc3339(at), "stream": stream, "line": line}),
        );
    }
}

/// One job while it runs: what providers read and how they report progress.
pub struct JobRun {
    pub(super) job: Mutex<Job>,
    pub(super) store: Store,
    pub(super) events: JobEvents,
    pub log: JobLog,
    pub(super) cancel: watch::Receiver<bool>,
    pub(super) node_token: String,
    pub(super) task_yaml: String,
    pub settings: RunnerSettings,
}

impl JobRun {
    pub async fn snapshot(&self) -> Job {
        self.job.lock().await.clone()
    }

    pub fn node_token(&self) -> &str {
        &self.node_token
    }

    /// The task with the real node token (for the provider only; the job shows it redacted).
    pub fn task_yaml(&self) -> &str {
        &self.task_yaml
    }

    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    async fn save(&self, job: &mut Job, kind: &'static str, data: serde_json::Value) {
        job.updated_at = now_ms();
        if let Err(e) = self.store.save_job(job).await {
            tracing::error!(job_id = %job.id, error = %e, "could not save job progress");
        }
        self.events.send(&job.id, kind, data);
    }

    pub async fn stage(&self, stage: Stage, detail: Option<String>) {
        let mut job = self.job.lock().await;
        if job.activate(stage, detail, now_ms()) {
            tracing::info!(job_id = %job.id, stage = stage.as_str(), "launch stage");
            let stages = json!(job.stages);
            self.save(&mut job, "stage", json!({"stage": stage, "stages": stages}))
                .await;
        }
    }

    pub async fn attempt_started(&self, attempt: Attempt) {
        let mut job = self.job.lock().await;
        tracing::info!(job_id = %job.id, cloud = %attempt.cloud, region = ?attempt.region, zone = ?attempt.zone, "placement attempt");
        job.attempts.push(attempt);
        let data = json!({"attempt": job.attempts.len(), "attempts": job.attempts});
        self.save(&mut job, "attempt", data).await;
    }

    /// Records the outcome of the latest attempt.
    pub async fn attempt_finished(&self, outcome: &str, reason: Option<String>) {
        let mut job = self.job.lock().await;
        let Some(last) = job.attempts.last_mut() else {
            return;
        };
        last.outcome = outcome.to_string();
        last.reason = reason;
        let data = json!({"attempt": job.attempts.len(), "attempts": job.attempts});
        self.save(&mut job, "attempt", data).await;
    }

    /// Remembers what the provider created, so a later teardown (even after a crash) finds it.
    pub async fn set_provider_state(&self, state: serde_json::Value) {
        let mut job = self.job.lock().await;
        job.provider_state = state;
        job.updated_at = now_ms();
        if let Err(e) = self.store.save_job(&job).await {
            tracing::error!(job_id = %job.id, error = %e, "could not save provider state");
        }
    }
}
