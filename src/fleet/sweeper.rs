//! The silence rules applied to the whole fleet: a node whose agent has not been heard from for
//! too long becomes unhealthy, then offline (see [`status::after_silence`]). Run on a timer by
//! [`super::tasks::FleetTasks`].

use std::time::Duration;

use super::events::NodeEventKind;
use super::live::LiveNode;
use super::status::{self, Transition};
use super::{Fleet, FleetError};
use crate::store::{Backend, StoreError};

impl Fleet {
    /// Applies the silence rules to every node as of `now_ms`; returns the transitions made.
    pub async fn sweep(&self, now_ms: i64) -> Vec<(String, Transition)> {
        let mut made = Vec::new();
        for entry in self.entries() {
            let mut live = entry.lock().await;
            let silence = |live: &LiveNode| {
                let silent =
                    Duration::from_millis(now_ms.saturating_sub(live.last_seen_ms).max(0) as u64);
                status::after_silence(live.node.status, silent, &self.policy)
            };
            if silence(&live).is_none() {
                continue;
            }
            if self.store.backend() == Backend::Postgres {
                // Other processes may be hearing this agent: look at what they stored first.
                if let Err(e) = self.reread(&mut live).await {
                    tracing::warn!(node_id = %live.node.id, error = %e, "could not re-read a silent node; will retry");
                    continue;
                }
            }
            let Some(t) = silence(&live) else {
                continue;
            };
            let node = live.node.clone();
            match self
                .apply_transition(&mut live, node, &t, NodeEventKind::Sweeper, now_ms)
                .await
            {
                Ok(()) => made.push((live.node.id.clone(), t)),
                // Another process changed it first; the next sweep looks again at fresh state.
                Err(FleetError::Store(StoreError::Conflict(_))) => {}
                Err(e) => {
                    tracing::error!(node_id = %live.node.id, error = %e, "could not record status change; will retry")
                }
            }
        }
        made
    }
}
