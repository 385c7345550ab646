//! The fleet's live state: one in-memory copy of every node, kept in step with the database.
//!
//! Each node sits behind its own lock, so changes of one node are made (and announced to
//! watchers) in order. A change is saved with the revision it was planned on ([`Fleet::save`]);
//! when another process changed the node first, the save fails as a conflict, the copy is
//! re-read, and [`retrying!`] plans the change again on the fresh state. Changes other processes
//! announce, and the periodic full re-read, come in through [`Fleet::refresh_node`] and
//! [`Fleet::refresh_all`] and are merged field by field ([`Fleet::merge`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::events::NodeEventKind;
use super::node::Node;
use super::status::{NodeStatus, Transition};
use super::store::StatusChange;
use super::{Fleet, FleetError};
use crate::clock::now_ms;
use crate::store::StoreError;

/// One node as this process knows it.
pub(super) struct LiveNode {
    pub(super) node: Node,
    /// When the agent was last heard from (registration or heartbeat), for the sweeper.
    pub(super) last_seen_ms: i64,
}

/// How many times a change is re-planned after losing a race with another process.
pub(super) const MAX_CONFLICTS: usize = 5;

/// `retrying!(entry, |live| async { ... })`: runs the block with `live`, the node's live state,
/// locked. When its write lost a race with another process ([`Fleet::save`] then re-read the
/// node), runs it again on the fresh state, up to [`MAX_CONFLICTS`] times. (A macro: an async
/// closure borrowing `live` would not be provably `Send` for the spawned launch tasks.)
macro_rules! retrying {
    ($entry:expr, |$live:ident| $attempt:expr) => {{
        let mut conflicts = 0;
        loop {
            let mut guard = $entry.lock().await;
            let $live: &mut $crate::fleet::live::LiveNode = &mut guard;
            let result: Result<_, $crate::fleet::FleetError> = $attempt.await;
            match result {
                Err($crate::fleet::FleetError::Store($crate::store::StoreError::Conflict(_)))
                    if conflicts < $crate::fleet::live::MAX_CONFLICTS =>
                {
                    conflicts += 1;
                }
                result => break result,
            }
        }
    }};
}
pub(super) use retrying;

impl Fleet {
    pub(super) fn cached(&self, id: &str) -> Option<Arc<Mutex<LiveNode>>> {
        self.nodes
            .read()
            .expect("node map lock is never poisoned")
            .get(id)
            .cloned()
    }

    pub(super) fn entries(&self) -> Vec<Arc<Mutex<LiveNode>>> {
        self.nodes
            .read()
            .expect("node map lock is never poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// The node's live entry; one this process has not heard of yet (another process created
    /// it a moment ago) is read from the database.
    pub(super) async fn entry(&self, id: &str) -> Result<Arc<Mutex<LiveNode>>, FleetError> {
        if let Some(entry) = self.cached(id) {
            return Ok(entry);
        }
        match self.store.load_node(id).await? {
            Some(node) => Ok(self.adopt(node)),
            None => Err(FleetError::NotFound(id.to_string())),
        }
    }

    /// Adds a node this process just created. Watchers hear of it before anyone else can
    /// reach it to change it.
    /// Adds a node this process just created. One already cached (read from the database
    /// since its creation committed) is as new or newer, and is kept.
    pub(super) fn insert_new(&self, live: LiveNode) {
        if self.cached(&live.node.id).is_some() {
            return;
        }
        // Watchers hear of it before anyone else can reach it to change it.
        self.changed(&live.node);
        self.nodes
            .write()
            .expect("node map lock is never poisoned")
            .entry(live.node.id.clone())
            .or_insert_with(|| Arc::new(Mutex::new(live)));
    }

    /// Adds a node read from the database (created by another process); if it arrived
    /// meanwhile, returns the entry there is.
    fn adopt(&self, node: Node) -> Arc<Mutex<LiveNode>> {
        let entry = Arc::new(Mutex::new(LiveNode {
            // A full silence window from now, as after a restart.
            last_seen_ms: now_ms(),
            node,
        }));
        let live = entry
            .clone()
            .try_lock_owned()
            .expect("a new entry is unlocked");
        {
            let mut nodes = self.nodes.write().expect("node map lock is never poisoned");
            if let Some(there) = nodes.get(&live.node.id) {
                return there.clone();
            }
            nodes.insert(live.node.id.clone(), entry.clone());
        }
        self.changed(&live.node);
        entry
    }

    /// Brings one node's live state up to what is stored (after another process changed it).
    pub async fn refresh_node(&self, id: &str) -> Result<(), FleetError> {
        let Some(stored) = self.store.load_node(id).await? else {
            return Ok(());
        };
        self.take_stored(stored).await;
        Ok(())
    }

    /// Brings every node's live state up to what is stored; returns how many changed.
    pub async fn refresh_all(&self) -> Result<usize, FleetError> {
        let mut changed = 0;
        for stored in self.store.load_nodes().await? {
            if self.take_stored(stored).await {
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn take_stored(&self, stored: Node) -> bool {
        match self.cached(&stored.id) {
            Some(entry) => self.merge(&mut *entry.lock().await, stored),
            None => {
                self.adopt(stored);
                true
            }
        }
    }

    /// Re-reads a node whose stored revision moved on (a write lost a race) into `live`.
    pub(super) async fn reread(&self, live: &mut LiveNode) -> Result<(), FleetError> {
        if let Some(stored) = self.store.load_node(&live.node.id).await? {
            self.merge(live, stored);
        }
        Ok(())
    }

    /// Takes what is newer in the stored row: everything but telemetry when its revision is
    /// newer, and the telemetry when another process heard the agent more recently. Watchers
    /// hear of it; returns whether anything changed.
    fn merge(&self, live: &mut LiveNode, mut stored: Node) -> bool {
        let telemetry_newer = stored.last_heartbeat_at > live.node.last_heartbeat_at;
        let heard_at = stored.last_heartbeat_at;
        let mut changed = false;
        if stored.revision > live.node.revision {
            if !telemetry_newer {
                stored.health_score = live.node.health_score;
                stored.last_heartbeat_at = live.node.last_heartbeat_at;
                stored.last_heartbeat = live.node.last_heartbeat.take();
                stored.agent_version = live.node.agent_version.take().or(stored.agent_version);
            }
            if let Some(at) = stored.registered_at {
                live.last_seen_ms = live.last_seen_ms.max(at);
            }
            live.node = stored;
            changed = true;
        } else if telemetry_newer {
            live.node.health_score = stored.health_score;
            live.node.last_heartbeat_at = stored.last_heartbeat_at;
            live.node.last_heartbeat = stored.last_heartbeat;
            if stored.agent_version.is_some() {
                live.node.agent_version = stored.agent_version;
            }
            changed = true;
        }
        if let (true, Some(at)) = (telemetry_newer, heard_at) {
            // Another process hears this agent; what it heard reaches the database up to one
            // flush interval late, so the silence clock gives the node that much benefit.
            let slack = self.peer_slack_ms.load(Ordering::Relaxed);
            live.last_seen_ms = live.last_seen_ms.max((at + slack).min(now_ms()));
        }
        if changed {
            self.changed(&live.node);
        }
        changed
    }

    /// Stores `node` (with its event) as the node's new state, if nobody changed it meanwhile;
    /// after losing such a race, `live` is re-read and the error is [`StoreError::Conflict`],
    /// so the caller decides again on fresh state.
    pub(super) async fn save(
        &self,
        live: &mut LiveNode,
        mut node: Node,
        change: Option<StatusChange<'_>>,
    ) -> Result<(), FleetError> {
        match self.store.save_node(&node, change).await {
            Ok(()) => {
                node.revision += 1;
                live.node = node;
                self.changed(&live.node);
                Ok(())
            }
            Err(e @ StoreError::Conflict(_)) => {
                tracing::debug!(node_id = %node.id, "node changed by another process; re-reading it");
                self.reread(live).await?;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Persists `node` with the transition applied (and its event, of `kind`), then makes it
    /// the live state.
    pub(super) async fn apply_transition(
        &self,
        live: &mut LiveNode,
        mut node: Node,
        t: &Transition,
        kind: NodeEventKind,
        now: i64,
    ) -> Result<(), FleetError> {
        let from = node.status;
        node.status = t.to;
        node.status_reason = Some(t.reason.clone());
        node.updated_at = now;
        let change = StatusChange {
            kind,
            from: Some(from),
            to: t.to,
            reason: &t.reason,
        };
        self.save(live, node, Some(change)).await?;
        self.counters.transition(t.to);
        tracing::info!(node_id = %live.node.id, from = %from, to = %t.to, reason = %t.reason, "node status changed");
        Ok(())
    }

    pub async fn list(&self) -> Vec<Node> {
        let mut nodes = Vec::new();
        for entry in self.entries() {
            nodes.push(entry.lock().await.node.clone());
        }
        nodes.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        nodes
    }

    pub async fn get(&self, id: &str) -> Result<Node, FleetError> {
        Ok(self.entry(id).await?.lock().await.node.clone())
    }

    /// How many nodes are in each status, for `/metrics`.
    pub async fn count_by_status(&self) -> Vec<(NodeStatus, usize)> {
        let mut counts: HashMap<NodeStatus, usize> = HashMap::new();
        for entry in self.entries() {
            *counts.entry(entry.lock().await.node.status).or_default() += 1;
        }
        NodeStatus::ALL
            .into_iter()
            .map(|s| (s, counts.get(&s).copied().unwrap_or(0)))
            .collect()
    }
}
