//! One launch job while it runs, as providers see it: what to launch (the job, what its provider
//! rendered for the machine with the real node token), how to report progress (stages,
//! attempts, provider state, log lines, each written to the database before it is sent to live
//! watchers), and whether it was cancelled.
//!
//! Every write goes through this process's [`JobLease`]: once the job is another claim's (a
//! write matched nothing, or the lease could not be renewed before it lapsed), nothing more is
//! written or sent, and the runner stops working on the job.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{watch, Mutex};

use super::events::{JobEventKind, JobEvents};
use super::job::Job;
use super::stage::{Attempt, AttemptOutcome, Stage};
use super::store::Lease;
use crate::clock::now_ms;
use crate::store::{Store, StoreError};

/// This process's hold on one running job: the fencing token its writes carry, until when the
/// lease is known to hold, and whether the job was lost to another claim. Cheap to clone.
#[derive(Clone)]
pub struct JobLease {
    store: Store,
    token: Lease,
    duration: Duration,
    /// The lease deadline last written (Unix ms): until then no other process can claim it.
    valid_until: Arc<AtomicI64>,
    lost: watch::Sender<bool>,
}

impl JobLease {
    pub(super) fn new(store: Store, token: Lease, duration: Duration, valid_until: i64) -> Self {
        JobLease {
            store,
            token,
            duration,
            valid_until: Arc::new(AtomicI64::new(valid_until)),
            lost: watch::channel(false).0,
        }
    }

    pub(super) fn token(&self) -> &Lease {
        &self.token
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Returns once the job is no longer this claim's.
    pub async fn lost(&self) {
        let mut rx = self.lost.subscribe();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    fn mark_lost(&self, why: &'static str) {
        if !self.lost.send_replace(true) {
            tracing::warn!(job_id = %self.token.job_id, claim = self.token.claim, why, "this process no longer holds the job's lease: it writes nothing more and tears nothing down");
        }
    }

    /// Sorts a fenced write's result: `Ok(true)` written, `Ok(false)` refused (the job is lost).
    fn written(&self, result: Result<(), StoreError>) -> Result<bool, StoreError> {
        match result {
            Ok(()) => Ok(true),
            Err(StoreError::LeaseLost(_)) => {
                self.mark_lost("another process took the job over; a write was refused");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Extends the lease: `Ok(None)` when it is another claim's now, else whether a cancel was
    /// requested. A database error past the last deadline written counts as lost: another
    /// process may have claimed the job since.
    pub(super) async fn renew(&self) -> Result<Option<bool>, StoreError> {
        let until = now_ms() + self.duration.as_millis() as i64;
        match self.store.renew_lease(&self.token, until).await {
            Ok(Some(cancel)) => {
                self.valid_until.store(until, Ordering::SeqCst);
                Ok(Some(cancel))
            }
            Ok(None) => {
                self.mark_lost("another process took the job over; the lease renewal was refused");
                Ok(None)
            }
            Err(e) => {
                if now_ms() >= self.valid_until.load(Ordering::SeqCst) {
                    self.mark_lost("the lease lapsed while the database was unreachable");
                }
                Err(e)
            }
        }
    }

    /// Renews the lease before something no other claim may do at the same time (launching,
    /// tearing down, a new node token): afterwards no other process can claim the job for a
    /// whole lease. `false` when the job is lost; database errors are retried until the lease
    /// lapses.
    pub(super) async fn confirm(&self) -> bool {
        loop {
            if self.is_lost() {
                return false;
            }
            match self.renew().await {
                Ok(held) => return held.is_some(),
                Err(e) => {
                    tracing::warn!(job_id = %self.token.job_id, error = %e, "could not confirm the job lease; retrying");
                    tokio::time::sleep((self.duration / 10).min(Duration::from_secs(1))).await;
                }
            }
        }
    }

    /// Writes the job if this claim still holds it: `Ok(false)` (and lost) when it does not.
    pub(super) async fn write(&self, job: &Job) -> Result<bool, StoreError> {
        if self.is_lost() {
            return Ok(false);
        }
        self.written(self.store.save_job(job, &self.token).await)
    }

    /// [`write`](Self::write), with a database error logged: `false` only when the job is lost.
    pub(super) async fn save(&self, job: &Job) -> bool {
        self.write(job).await.unwrap_or_else(|e| {
            tracing::error!(job_id = %job.id, error = %e, "could not save the job");
            true
        })
    }
}

/// Writes a job's log lines and narrates them to watchers; cheap to clone into output readers.
#[derive(Clone)]
pub struct JobLog {
    pub(super) lease: JobLease,
    pub(super) events: JobEvents,
}

impl JobLog {
    pub async fn line(&self, stream: &str, line: &str) {
        if self.lease.is_lost() {
            return;
        }
        let at = now_ms();
        let job_id = &self.lease.token.job_id;
        let stored = self
            .lease
            .store
            .append_logs(&self.lease.token, &[(at, stream, line)])
            .await;
        match self.lease.written(stored) {
            Ok(true) => self.events.send(
                job_id,
                JobEventKind::Log,
                json!({"at": crate::clock::rfc3339(at), "stream": stream, "line": line}),
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(job_id = %job_id, error = %e, "could not store a log line"),
        }
    }
}

/// One job while it runs: what providers read and how they report progress.
pub struct JobRun {
    pub(super) job: Mutex<Job>,
    pub(super) lease: JobLease,
    pub(super) events: JobEvents,
    pub log: JobLog,
    pub(super) cancel: watch::Receiver<bool>,
    pub(super) node_token: String,
    /// The model server's API key for this launch (empty when a takeover only waits).
    pub(super) model_key: String,
    /// What the provider rendered for the machine (empty when a takeover only waits).
    pub(super) rendered_task: String,
    /// The control plane's URL as the node reaches it (the agent registers and heartbeats here).
    pub control_plane_url: String,
    /// Where the node downloads the agent binary from.
    pub agent_url: String,
}

impl JobRun {
    pub async fn snapshot(&self) -> Job {
        self.job.lock().await.clone()
    }

    pub fn node_token(&self) -> &str {
        &self.node_token
    }

    /// The API key the launch's model server is to want (vLLM's `--api-key`).
    pub fn model_key(&self) -> &str {
        &self.model_key
    }

    /// What the provider rendered for the machine (SkyPilot's task, a first-boot script), with
    /// the real node token: for the provider only; the job shows it masked.
    pub fn rendered_task(&self) -> &str {
        &self.rendered_task
    }

    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    async fn save(&self, job: &mut Job, kind: JobEventKind, data: serde_json::Value) {
        job.updated_at = now_ms();
        if self.lease.save(job).await {
            self.events.send(&job.id, kind, data);
        }
    }

    pub async fn stage(&self, stage: Stage, detail: Option<String>) {
        let mut job = self.job.lock().await;
        if job.activate(stage, detail, now_ms()) {
            tracing::info!(job_id = %job.id, stage = stage.as_str(), "launch stage");
            let stages = json!(job.stages);
            self.save(
                &mut job,
                JobEventKind::Stage,
                json!({"stage": stage, "stages": stages}),
            )
            .await;
        }
    }

    pub async fn attempt_started(&self, attempt: Attempt) {
        let mut job = self.job.lock().await;
        tracing::info!(job_id = %job.id, cloud = %attempt.cloud, region = ?attempt.region, zone = ?attempt.zone, "placement attempt");
        job.attempts.push(attempt);
        let data = json!({"attempt": job.attempts.len(), "attempts": job.attempts});
        self.save(&mut job, JobEventKind::Attempt, data).await;
    }

    /// Records the outcome of the latest attempt.
    pub async fn attempt_finished(&self, outcome: AttemptOutcome, reason: Option<String>) {
        let mut job = self.job.lock().await;
        let Some(last) = job.attempts.last_mut() else {
            return;
        };
        last.outcome = outcome;
        last.reason = reason;
        let data = json!({"attempt": job.attempts.len(), "attempts": job.attempts});
        self.save(&mut job, JobEventKind::Attempt, data).await;
    }

    /// Remembers what the provider created, so a later teardown (even after a crash) finds it.
    pub async fn set_provider_state(&self, state: serde_json::Value) {
        let mut job = self.job.lock().await;
        job.provider_state = state;
        job.updated_at = now_ms();
        self.lease.save(&job).await;
    }
}
