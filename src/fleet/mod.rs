//! The fleet: every node, its live health state, and the rules for changing it.
//!
//! Live state is kept in memory so a heartbeat costs no database round-trip unless it changes
//! the node's status. Everything that must survive a crash (node creation, registration, every
//! status change and its event) is committed before the caller gets an answer; the latest
//! heartbeat telemetry is marked dirty and written in batches by [`sweeper::FleetTasks`], so a
//! crash loses at most one flush interval of telemetry.

pub mod feed;
pub mod node;
pub mod status;
pub mod sweeper;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::nodes::{StatusChange, Telemetry};
use crate::store::{Store, StoreError};
use node::{HeartbeatReport, NewNode, Node, NodeEvent, Registration};
use status::{HealthPolicy, HeartbeatSignal, NodeStatus, Transition};

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for FleetError {
    fn from(e: sqlx::Error) -> Self {
        FleetError::Store(StoreError::Sqlx(e))
    }
}

/// What the control plane tells an agent after a registration or heartbeat.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentAck {
    pub node_id: String,
    pub status: NodeStatus,
    /// `run`, or `drain` when the node should finish in-flight work and take no more.
    pub desired: &'static str,
    pub heartbeat_interval_s: f64,
}

struct LiveNode {
    node: Node,
    /// When the agent was last heard from (registration or heartbeat), for the sweeper.
    last_seen_ms: i64,
}

/// Told about a node each time its live state changes (created, registered, heartbeat,
/// status change), while the node's lock is held, so changes of one node arrive in order.
pub type NodeWatcher = Arc<dyn Fn(&Node) + Send + Sync>;

pub struct Fleet {
    store: Store,
    policy: HealthPolicy,
    metrics: Arc<Metrics>,
    nodes: RwLock<HashMap<String, Arc<Mutex<LiveNode>>>>,
    /// Nodes whose telemetry changed since the last flush.
    dirty: StdMutex<HashSet<String>>,
    watchers: RwLock<Vec<NodeWatcher>>,
}

const TRANSITIONS_HELP: &str = "Node status transitions, by new status.";
const HEARTBEATS_HELP: &str = "Heartbeats received, by result.";

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
        for to in NodeStatus::ALL {
            metrics.declare_counter(
                "skylaunch_node_transitions_total",
                TRANSITIONS_HELP,
                &[("to", to.as_str())],
            );
        }
        for result in ["accepted", "rejected"] {
            metrics.declare_counter(
                "skylaunch_heartbeats_total",
                HEARTBEATS_HELP,
                &[("result", result)],
            );
        }
        Ok(Fleet {
            store,
            policy,
            metrics,
            nodes: RwLock::new(nodes),
            dirty: StdMutex::new(HashSet::new()),
            watchers: RwLock::new(Vec::new()),
        })
    }

    /// Adds a watcher and tells it about every node there is now.
    pub async fn watch(&self, watcher: NodeWatcher) {
        self.watchers
            .write()
            .expect("watcher lock is never poisoned")
            .push(watcher.clone());
        for entry in self.entries() {
            watcher(&entry.lock().await.node);
        }
    }

    fn changed(&self, node: &Node) {
        for watcher in self
            .watchers
            .read()
            .expect("watcher lock is never poisoned")
            .iter()
        {
            watcher(node);
        }
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    fn entry(&self, id: &str) -> Result<Arc<Mutex<LiveNode>>, FleetError> {
        self.nodes
            .read()
            .expect("node map lock is never poisoned")
            .get(id)
            .cloned()
            .ok_or_else(|| FleetError::NotFound(id.to_string()))
    }

    fn entries(&self) -> Vec<Arc<Mutex<LiveNode>>> {
        self.nodes
            .read()
            .expect("node map lock is never poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Adds a node whose agent will register later; returns it with its one-time token.
    pub async fn create_node(
        &self,
        new: NewNode,
        launch_job_id: Option<String>,
    ) -> Result<(Node, String), FleetError> {
        new.validate()?;
        let token = token::generate();
        let now = now_ms();
        let node = Node {
            id: uuid::Uuid::new_v4().to_string(),
            name: new.name,
            status: NodeStatus::Launching,
            status_reason: Some("waiting for the agent to register".to_string()),
            model_name: new.model_name,
            endpoint_url: new.endpoint_url,
            provider: new.provider.unwrap_or_else(|| "byo".to_string()),
            region: None,
            zone: None,
            gpu_type: None,
            gpu_count: None,
            instance_type: None,
            spot_instance: false,
            labels: new.labels.unwrap_or_default(),
            agent_version: None,
            health_score: None,
            last_heartbeat_at: None,
            last_heartbeat: None,
            launch_job_id,
            registered_at: None,
            created_at: now,
            updated_at: now,
            token_hash: token::hash(&token),
        };
        let change = StatusChange {
            kind: "created",
            from: None,
            to: NodeStatus::Launching,
            reason: "node created; waiting for the agent to register",
        };
        // The unique index on live names is the guard against duplicates, also across processes.
        match self.store.insert_node(&node, change).await {
            Ok(()) => {}
            Err(StoreError::Sqlx(e))
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                return Err(FleetError::NameTaken(node.name));
            }
            Err(e) => return Err(e.into()),
        }
        self.metrics.inc(
            "skylaunch_node_transitions_total",
            TRANSITIONS_HELP,
            &[("to", "launching")],
        );
        tracing::info!(node_id = %node.id, name = %node.name, "node created");
        let live = LiveNode {
            node: node.clone(),
            last_seen_ms: now,
        };
        // Watchers hear of it before anyone else can reach it to change it.
        self.changed(&node);
        self.nodes
            .write()
            .expect("node map lock is never poisoned")
            .insert(node.id.clone(), Arc::new(Mutex::new(live)));
        Ok((node, token))
    }

    /// Issues a new token for a node (the old one stops working) and returns it. Launch jobs call
    /// this when they start, so a token's plaintext only ever lives in the running launch.
    pub async fn rotate_token(&self, id: &str) -> Result<String, FleetError> {
        let entry = self.entry(id)?;
        let mut live = entry.lock().await;
        let token = token::generate();
        let hash = token::hash(&token);
        self.store.set_node_token_hash(id, &hash).await?;
        live.node.token_hash = hash;
        Ok(token)
    }

    /// Checks a node token; the node must exist and the token must be that node's.
    async fn authorised(&self, id: &str, token: &str) -> Result<Arc<Mutex<LiveNode>>, FleetError> {
        let entry = self.entry(id)?;
        let hash = {
            let live = entry.lock().await;
            live.node.token_hash.clone()
        };
        if !token::matches_hash(token, &hash) {
            return Err(FleetError::Unauthorized(id.to_string()));
        }
        Ok(entry)
    }

    pub async fn register(
        &self,
        id: &str,
        token: &str,
        reg: Registration,
    ) -> Result<AgentAck, FleetError> {
        let entry = self.authorised(id, token).await?;
        reg.validate()?;
        let mut live = entry.lock().await;
        if live.node.status == NodeStatus::Terminated {
            return Err(FleetError::Terminated(id.to_string()));
        }
        let now = now_ms();
        let mut node = live.node.clone();
        node.provider = reg.provider;
        node.region = Some(reg.region);
        node.zone = reg.zone;
        node.model_name = reg.model_name;
        node.endpoint_url = Some(reg.endpoint_url);
        node.gpu_type = Some(reg.gpu_type);
        node.gpu_count = reg.gpu_count.map(i64::from);
        node.instance_type = Some(reg.instance_type);
        node.spot_instance = reg.spot_instance;
        if reg.agent_version.is_some() {
            node.agent_version = reg.agent_version;
        }
        if let Some(labels) = reg.labels {
            node.labels.extend(labels);
        }
        node.registered_at = Some(now);
        node.updated_at = now;
        let transition = status::after_registration(node.status);
        let from = node.status;
        if let Some(t) = &transition {
            node.status = t.to;
            node.status_reason = Some(t.reason.clone());
        }
        let change = transition.as_ref().map(|t| StatusChange {
            kind: "registered",
            from: Some(from),
            to: t.to,
            reason: &t.reason,
        });
        self.store.save_node(&node, change).await?;
        if let Some(t) = &transition {
            self.count_transition(t);
        }
        tracing::info!(node_id = %id, status = %node.status, provider = %node.provider, "agent registered");
        live.node = node;
        live.last_seen_ms = now;
        self.changed(&live.node);
        Ok(self.ack(&live.node))
    }

    pub async fn heartbeat(
        &self,
        id: &str,
        token: &str,
        report: HeartbeatReport,
    ) -> Result<AgentAck, FleetError> {
        let result = self.apply_heartbeat(id, token, report).await;
        let outcome = if result.is_ok() {
            "accepted"
        } else {
            "rejected"
        };
        self.metrics.inc(
            "skylaunch_heartbeats_total",
            HEARTBEATS_HELP,
            &[("result", outcome)],
        );
        result
    }

    async fn apply_heartbeat(
        &self,
        id: &str,
        token: &str,
        report: HeartbeatReport,
    ) -> Result<AgentAck, FleetError> {
        let entry = self.authorised(id, token).await?;
        report.validate()?;
        let mut live = entry.lock().await;
        match live.node.status {
            NodeStatus::Terminated => return Err(FleetError::Terminated(id.to_string())),
            NodeStatus::Launching => return Err(FleetError::NotRegistered(id.to_string())),
            _ => {}
        }
        let now = now_ms();
        let signal = HeartbeatSignal {
            health_score: report.health_score,
            model_ready: report.model_ready(),
            spot_notice: report.spot_interruption.as_ref().map(|n| n.describe()),
            going_away: report.going_away,
        };
        let transition = status::after_heartbeat(live.node.status, &signal, &self.policy);
        let kind = if signal.spot_notice.is_some() {
            "spot_interruption"
        } else {
            "heartbeat"
        };
        if let Some(t) = &transition {
            // A status change is committed (with the telemetry that caused it) before the ack.
            let mut node = live.node.clone();
            record_telemetry(&mut node, report, now);
            self.apply(&mut live, node, t, kind, now).await?;
        } else {
            record_telemetry(&mut live.node, report, now);
            self.dirty
                .lock()
                .expect("dirty set lock is never poisoned")
                .insert(id.to_string());
            self.changed(&live.node);
        }
        live.last_seen_ms = now;
        Ok(self.ack(&live.node))
    }

    /// Persists `node` with the transition applied, then makes it the live state.
    async fn apply(
        &self,
        live: &mut LiveNode,
        mut node: Node,
        t: &Transition,
        kind: &str,
        now: i64,
    ) -> Result<(), FleetError> {
        let from = node.status;
        node.status = t.to;
        node.status_reason = Some(t.reason.clone());
        node.updated_at = now;
        self.store
            .save_node(
                &node,
                Some(StatusChange {
                    kind,
                    from: Some(from),
                    to: t.to,
                    reason: &t.reason,
                }),
            )
            .await?;
        self.count_transition(t);
        tracing::info!(node_id = %node.id, from = %from, to = %t.to, reason = %t.reason, "node status changed");
        live.node = node;
        self.changed(&live.node);
        Ok(())
    }

    fn count_transition(&self, t: &Transition) {
        self.metrics.inc(
            "skylaunch_node_transitions_total",
            TRANSITIONS_HELP,
            &[("to", t.to.as_str())],
        );
    }

    fn ack(&self, node: &Node) -> AgentAck {
        AgentAck {
            node_id: node.id.clone(),
            status: node.status,
            desired: if node.status == NodeStatus::Draining {
                "drain"
            } else {
                "run"
            },
            heartbeat_interval_s: self.policy.heartbeat_interval.as_secs_f64(),
        }
    }

    /// Admin: stop sending new traffic to a node.
    pub async fn drain(&self, id: &str, reason: &str) -> Result<Node, FleetError> {
        self.admin_transition(id, NodeStatus::Draining, reason)
            .await
    }

    /// Admin: mark a node terminated (the VM itself is torn down by its launch provider).
    pub async fn terminate(&self, id: &str, reason: &str) -> Result<Node, FleetError> {
        self.admin_transition(id, NodeStatus::Terminated, reason)
            .await
    }

    async fn admin_transition(
        &self,
        id: &str,
        to: NodeStatus,
        reason: &str,
    ) -> Result<Node, FleetError> {
        let entry = self.entry(id)?;
        let mut live = entry.lock().await;
        match live.node.status {
            s if s == to => return Ok(live.node.clone()),
            NodeStatus::Terminated => return Err(FleetError::Terminated(id.to_string())),
            _ => {}
        }
        let t = Transition {
            to,
            reason: reason.to_string(),
        };
        let node = live.node.clone();
        self.apply(&mut live, node, &t, "admin", now_ms()).await?;
        Ok(live.node.clone())
    }

    /// Applies the silence rules to every node as of `now_ms`; returns the transitions made.
    pub async fn sweep(&self, now_ms: i64) -> Vec<(String, Transition)> {
        let mut made = Vec::new();
        for entry in self.entries() {
            let mut live = entry.lock().await;
            let silent =
                Duration::from_millis(now_ms.saturating_sub(live.last_seen_ms).max(0) as u64);
            let Some(t) = status::after_silence(live.node.status, silent, &self.policy) else {
                continue;
            };
            let node = live.node.clone();
            match self.apply(&mut live, node, &t, "sweeper", now_ms).await {
                Ok(()) => made.push((live.node.id.clone(), t)),
                Err(e) => {
                    tracing::error!(node_id = %live.node.id, error = %e, "could not record status change; will retry")
                }
            }
        }
        made
    }

    /// Writes the telemetry of every node that heartbeated since the last flush.
    pub async fn flush_telemetry(&self) -> Result<usize, FleetError> {
        let ids: Vec<String> =
            std::mem::take(&mut *self.dirty.lock().expect("dirty set lock is never poisoned"))
                .into_iter()
                .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let mut batch = Vec::with_capacity(ids.len());
        for id in &ids {
            let Ok(entry) = self.entry(id) else { continue };
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
                // Put them back so the next flush tries again.
                self.dirty
                    .lock()
                    .expect("dirty set lock is never poisoned")
                    .extend(ids);
                return Err(e.into());
            }
        }
        Ok(batch.len())
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
        Ok(self.entry(id)?.lock().await.node.clone())
    }

    pub async fn events(&self, id: &str, limit: i64) -> Result<Vec<NodeEvent>, FleetError> {
        self.entry(id)?;
        Ok(self.store.recent_node_events(id, limit).await?)
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

fn record_telemetry(node: &mut Node, report: HeartbeatReport, now: i64) {
    node.health_score = Some(report.health_score);
    node.last_heartbeat_at = Some(now);
    if let Some(version) = &report.agent_version {
        node.agent_version = Some(version.clone());
    }
    node.last_heartbeat = Some(report);
    node.updated_at = now;
}
