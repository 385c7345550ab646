//! Teardowns that failed are retried, not forgotten. A node whose machine a teardown could not
//! remove waits in `teardown_pending` (no traffic); this task tries its launch's teardown again,
//! with a backoff per node from the retry interval up to an hour, until the provider confirms
//! the machine is gone, and only then marks the node `terminated`. Each process retries the
//! nodes it sees; teardowns are idempotent, so two processes retrying one node is harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::runner::JobRunner;
use crate::fleet::status::NodeStatus;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::store::Store;

/// The longest wait between two tries for one node.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

const RETRIES: &str = "skylaunch_teardown_retries_total";
const RETRIES_HELP: &str =
    "Retried teardowns of nodes in teardown_pending, by outcome (succeeded, failed).";

pub struct TeardownRetrier {
    pub fleet: Arc<Fleet>,
    pub runner: Arc<JobRunner>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// The first wait after a failure; each failure in a row doubles it.
    pub every: Duration,
}

/// A node's failures in a row and when it is next tried.
struct Backoff {
    failures: u32,
    next: Instant,
}

impl TeardownRetrier {
    /// Retries until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff: HashMap<String, Backoff> = HashMap::new();
        loop {
            self.round(&mut backoff).await;
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Tries every pending node whose wait is over.
    async fn round(&self, backoff: &mut HashMap<String, Backoff>) {
        let pending: Vec<_> = self
            .fleet
            .list()
            .await
            .into_iter()
            .filter(|n| n.status == NodeStatus::TeardownPending)
            .collect();
        backoff.retain(|id, _| pending.iter().any(|n| &n.id == id));
        for node in pending {
            if backoff
                .get(&node.id)
                .is_some_and(|b| b.next > Instant::now())
            {
                continue;
            }
            let outcome = self.try_once(&node.id, node.launch_job_id.as_deref()).await;
            match outcome {
                Ok(()) => {
                    backoff.remove(&node.id);
                    self.metrics
                        .inc(RETRIES, RETRIES_HELP, &[("outcome", "succeeded")]);
                }
                Err(message) => {
                    let b = backoff.entry(node.id.clone()).or_insert(Backoff {
                        failures: 0,
                        next: Instant::now(),
                    });
                    b.failures += 1;
                    let wait = self
                        .every
                        .saturating_mul(1 << b.failures.min(16))
                        .min(MAX_BACKOFF);
                    b.next = Instant::now() + wait;
                    self.metrics
                        .inc(RETRIES, RETRIES_HELP, &[("outcome", "failed")]);
                    tracing::warn!(node_id = %node.id, failures = b.failures, retry_in_s = wait.as_secs(), error = %message, "teardown retry failed; the machine may still be billing");
                    let _ = self
                        .fleet
                        .record_event(
                            &node.id,
                            crate::fleet::events::NodeEventKind::TeardownRetryFailed,
                            &format!(
                                "{message} (try {}; next in {} s)",
                                b.failures,
                                wait.as_secs()
                            ),
                        )
                        .await;
                }
            }
        }
    }

    /// One teardown of the node's launch; on success the node is terminated.
    async fn try_once(&self, node_id: &str, job_id: Option<&str>) -> Result<(), String> {
        if let Some(job_id) = job_id {
            let job = self
                .store
                .job(job_id)
                .await
                .map_err(|e| format!("could not read launch {job_id}: {e}"))?;
            if let Some(job) = job {
                self.runner
                    .teardown(&job)
                    .await
                    .map_err(|e| e.message.clone())?;
            }
        }
        self.fleet
            .terminate(node_id, "its machine is gone (teardown retried)")
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(node_id, "teardown retried and confirmed: node terminated");
        Ok(())
    }
}
