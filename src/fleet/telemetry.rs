//! Heartbeat telemetry in batches. A heartbeat that changes no status only updates the live copy
//! and marks the node pending; the flusher ([`super::tasks::FleetTasks`]) writes every pending
//! node's latest measurements in one transaction per batch, so a busy fleet's heartbeats cost
//! one write per flush interval instead of one per heartbeat.

use std::collections::HashSet;
use std::sync::Mutex;

use super::node::{HeartbeatReport, Node};
use super::store::Telemetry;
use super::{Fleet, FleetError};

/// Ids of the nodes whose telemetry changed since the last flush.
#[derive(Default)]
pub(super) struct PendingTelemetry(Mutex<HashSet<String>>);

impl PendingTelemetry {
    pub(super) fn mark(&self, id: String) {
        self.0
            .lock()
            .expect("pending telemetry lock is never poisoned")
            .insert(id);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .expect("pending telemetry lock is never poisoned"),
        )
        .into_iter()
        .collect()
    }

    /// Marks `ids` again, after a flush of them failed, so the next flush tries again.
    fn put_back(&self, ids: Vec<String>) {
        self.0
            .lock()
            .expect("pending telemetry lock is never poisoned")
            .extend(ids);
    }
}

/// Puts a heartbeat's measurements on the node (its live copy, or a copy about to be saved).
pub(super) fn record_telemetry(node: &mut Node, report: HeartbeatReport, now: i64) {
    node.health_score = Some(report.health_score);
    node.last_heartbeat_at = Some(now);
    if let Some(version) = &report.agent_version {
        node.agent_version = Some(version.clone());
    }
    node.last_heartbeat = Some(report);
    node.updated_at = now;
}

impl Fleet {
    /// Writes the telemetry of every node that heartbeated since the last flush.
    pub async fn flush_telemetry(&self) -> Result<usize, FleetError> {
        let ids = self.pending_telemetry.take();
        if ids.is_empty() {
            return Ok(0);
        }
        let mut batch = Vec::with_capacity(ids.len());
        for id in &ids {
            let Some(entry) = self.cached(id) else {
                continue;
            };
            let live = entry.lock().await;
            batch.push(Telemetry {
                node_id: id.clone(),
                health_score: live.node.health_score,
                last_heartbeat_at: live.node.last_heartbeat_at,
                last_heartbeat: live.node.last_heartbeat.as_ref().map(|hb| {
                    serde_json::to_string(hb).expect("heartbeat reports always serialise")
                }),
                updated_at: live.node.updated_at,
            });
        }
        for chunk in batch.chunks(2_000) {
            if let Err(e) = self.store.save_telemetry(chunk).await {
                self.pending_telemetry.put_back(ids);
                return Err(e.into());
            }
        }
        Ok(batch.len())
    }
}
