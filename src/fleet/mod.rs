//! The fleet: every node, its live health state, and the rules for changing it.
//!
//! Live state is kept in memory so a heartbeat costs no database round-trip unless it changes
//! the node's status. Everything that must survive a crash (node creation, registration, every
//! status change and its event) is committed before the caller gets an answer; the latest
//! heartbeat telemetry is marked dirty and written in batches (`telemetry.rs`, run by
//! [`tasks::FleetTasks`]), so a crash loses at most one flush interval of telemetry.
//!
//! Several processes may share one PostgreSQL database. Each keeps its own live copy of every
//! node; a stored change is announced on a channel ([`sync`]) and the others re-read the node,
//! with a periodic full re-read as the safety net. Writes carry the node's revision, so a process
//! acting on a stale copy loses the race cleanly, re-reads and decides again (`live.rs`).
//!
//! [`Fleet`] is the one handle, its operations in one file per concern: `live.rs` (the
//! in-memory copy, merging what other processes stored, optimistic saves, reads), `agent.rs`
//! (registration and heartbeats), `admin.rs` (creating nodes, admin transitions, credentials,
//! events), `sweeper.rs` (the silence rules), `telemetry.rs` (batched heartbeat writes),
//! `watchers.rs` (who hears of each change), `counters.rs` (its metrics) and `store.rs` (its
//! rows). [`status`] holds the rules themselves, as pure functions.

mod admin;
mod agent;
mod counters;
pub mod endpoint;
pub mod events;
pub mod feed;
mod live;
pub mod node;
pub mod status;
mod store;
mod sweeper;
pub mod sync;
pub mod tasks;
mod telemetry;
#[cfg(test)]
mod tests;
pub mod token;
mod watchers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use counters::FleetCounters;
use live::LiveNode;
use status::{HealthPolicy, NodeStatus};
use telemetry::PendingTelemetry;
use watchers::Watchers;

pub use watchers::NodeWatcher;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("no node with id {0:?}")]
    NotFound(String),
    #[error("the token is not valid for node {0}")]
    Unauthorized(String),
    #[error("node {0} has been terminated")]
    Terminated(String),
    #[error("a node named {0:?} already exists")]
    NameTaken(String),
    #[error(
        "node {0} has not registered yet: the agent must call POST /admin/nodes/register first"
    )]
    NotRegistered(String),
    /// What an agent asked for at registration is not its to change (another model, an
    /// endpoint it may not use).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a launch hands its node: the agent's token and the model server's API key.
pub struct NodeCredentials {
    pub token: String,
    pub model_key: String,
}

/// What the control plane tells an agent after a registration or heartbeat (the agent's wire
/// type, shared with `skylaunch-agent`), with the node's status.
pub type AgentAck = skylaunch_protocol::AgentAck<NodeStatus>;

/// What the fleet is told at start: the health model's thresholds, and how often its
/// background work runs (see [`tasks::FleetTasks`]).
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub health: HealthPolicy,
    /// How often the sweeper applies the silence rules.
    pub sweep_every: Duration,
    /// How often batched heartbeat telemetry is written (a crash loses at most this much).
    pub telemetry_flush_every: Duration,
    /// With several processes on one PostgreSQL database: how often each re-reads every node.
    pub refresh_every: Duration,
}

pub struct Fleet {
    store: Store,
    policy: HealthPolicy,
    counters: FleetCounters,
    nodes: RwLock<HashMap<String, Arc<Mutex<LiveNode>>>>,
    /// Nodes whose telemetry changed since the last flush.
    pending_telemetry: PendingTelemetry,
    watchers: Watchers,
    /// How late another process's heartbeat telemetry may reach the database (its flush
    /// interval), in ms: the benefit of the doubt a node heard by another process gets.
    peer_slack_ms: AtomicI64,
}

impl Fleet {
    /// Loads every node from the store. Live nodes get a full silence window from now before the
    /// sweeper may act, so a control-plane restart does not flap healthy nodes.
    pub async fn load(
        store: Store,
        policy: HealthPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<Fleet, FleetError> {
        let started = now_ms();
        let nodes = store
            .load_nodes()
            .await?
            .into_iter()
            .map(|node| {
                let live = LiveNode {
                    last_seen_ms: started,
                    node,
                };
                (live.node.id.clone(), Arc::new(Mutex::new(live)))
            })
            .collect();
        Ok(Fleet {
            store,
            policy,
            counters: FleetCounters::new(metrics),
            nodes: RwLock::new(nodes),
            pending_telemetry: PendingTelemetry::default(),
            watchers: Watchers::default(),
            peer_slack_ms: AtomicI64::new(0),
        })
    }

    /// How late other processes write heartbeat telemetry (their flush interval).
    pub fn set_peer_slack(&self, slack: Duration) {
        self.peer_slack_ms
            .store(slack.as_millis() as i64, Ordering::Relaxed);
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }
}
