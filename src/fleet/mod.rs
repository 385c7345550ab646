//! The fleet: every node, its live health state, and the rules for changing it.
//!
//! Live state is kept in memory so a heartbeat costs no database round-trip unless it changes
//! the node's status. Everything that must survive a crash (node creation, registration, every
//! status change and its event) is committed before the caller gets an answer; the latest
//! heartbeat telemetry is marked dirty and written in batches by [`sweeper::FleetTasks`], so a
//! crash loses at most one flush interval of telemetry.
//!
//! Several processes may share one PostgreSQL database. Each keeps its own live copy of every
//! node; a stored change is announced on a channel ([`sync`]) and the others re-read the node,
//! with a periodic full re-read as the safety net. Writes carry the node's revision, so a process
//! acting on a stale copy loses the race cleanly, re-reads and decides again.

pub mod endpoint;
pub mod feed;
pub mod node;
pub mod status;
pub mod sweeper;
pub mod sync;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::nodes::{StatusChange, Telemetry};
use crate::store::{Backend, Store, StoreError};
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
    /// What an agent asked for at registration is not its to change (another model, an
    /// endpoint it may not use).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for FleetError {
    fn from(e: sqlx::Error) -> Self {
        FleetError::Store(StoreError::from(e))
    }
}

/// What a launch hands its node: the agent's token and the model server's API key.
pub struct NodeCredentials {
    pub token: String,
    pub model_key: String,
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
    /// How late another process's heartbeat telemetry may reach the database (its flush
    /// interval), in ms: the benefit of the doubt a node heard by another process gets.
    peer_slack_ms: AtomicI64,
}

/// How many times a change is re-planned after losing a race with another process.
const MAX_CONFLICTS: usize = 5;

/// `retrying!(entry, |live| async { ... })`: runs the block with `live`, the node's live state,
/// locked. When its write lost a race with another process ([`Fleet::save`] then re-read the
/// node), runs it again on the fresh state, up to [`MAX_CONFLICTS`] times. (A macro: an async
/// closure borrowing `live` would not be provably `Send` for the spawned launch tasks.)
macro_rules! retrying {
    ($entry:expr, |$live:ident| $attempt:expr) => {{
        let mut conflicts = 0;
        loop {
            let mut guard = $entry.lock().await;
            let $live: &mut LiveNode = &mut guard;
            let result: Result<_, FleetError> = $attempt.await;
            match result {
                Err(FleetError::Store(StoreError::Conflict(_))) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                }
                result => break result,
            }
        }
    }};
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
            peer_slack_ms: AtomicI64::new(0),
        })
    }

    /// How late other processes write heartbeat telemetry (their flush interval).
    pub fn set_peer_slack(&self, slack: Duration) {
        self.peer_slack_ms
            .store(slack.as_millis() as i64, Ordering::Relaxed);
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

    fn cached(&self, id: &str) -> Option<Arc<Mutex<LiveNode>>> {
        self.nodes
            .read()
            .expect("node map lock is never poisoned")
            .get(id)
            .cloned()
    }

    /// The node's live entry; one this process has not heard of yet (another process created
    /// it a moment ago) is read from the database.
    async fn entry(&self, id: &str) -> Result<Arc<Mutex<LiveNode>>, FleetError> {
        if let Some(entry) = self.cached(id) {
            return Ok(entry);
        }
        match self.store.load_node(id).await? {
            Some(node) => Ok(self.adopt(node)),
            None => Err(FleetError::NotFound(id.to_string())),
        }
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
    async fn reread(&self, live: &mut LiveNode) -> Result<(), FleetError> {
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
        let mut tx = self.store.pool().begin().await?;
        let (node, token) = self.create_node_in(&mut tx, new, launch_job_id).await?;
        tx.commit().await?;
        Ok((self.node_created(node), token))
    }

    /// [`Fleet::create_node`]'s write inside the caller's transaction (a launch stores its job
    /// with its node). Once that commits, hand the node to [`Fleet::node_created`]; until then
    /// this process's fleet does not know it.
    pub async fn create_node_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
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
            endpoint_pinned: new.endpoint_url.is_some(),
            model_key: None,
            on_this_host: new.provider.as_deref() == Some("local"),
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
            revision: 0,
        };
        let change = StatusChange {
            kind: "created",
            from: None,
            to: NodeStatus::Launching,
            reason: "node created; waiting for the agent to register",
        };
        // The unique index on live names is the guard against duplicates, also across processes.
        match self.store.insert_node_in(tx, &node, change).await {
            Ok(()) => Ok((node, token)),
            Err(StoreError::Duplicate(_)) => Err(FleetError::NameTaken(node.name)),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes a node [`Fleet::create_node_in`] wrote, once its transaction committed, into the
    /// live fleet; returns it as stored.
    pub fn node_created(&self, mut node: Node) -> Node {
        node.revision += 1;
        self.metrics.inc(
            "skylaunch_node_transitions_total",
            TRANSITIONS_HELP,
            &[("to", "launching")],
        );
        tracing::info!(node_id = %node.id, name = %node.name, "node created");
        // Already here only if this process read it from the database since the commit (a
        // launch claimed at once): that copy is as new or newer.
        if self.cached(&node.id).is_some() {
            return node;
        }
        let live = LiveNode {
            node: node.clone(),
            last_seen_ms: node.updated_at,
        };
        // Watchers hear of it before anyone else can reach it to change it.
        self.changed(&node);
        self.nodes
            .write()
            .expect("node map lock is never poisoned")
            .entry(node.id.clone())
            .or_insert_with(|| Arc::new(Mutex::new(live)));
        node
    }

    /// Issues a new token for a node (the old one stops working) and returns it.
    pub async fn rotate_token(&self, id: &str) -> Result<String, FleetError> {
        Ok(self.rotate_credentials(id).await?.token)
    }

    /// Issues a node's credentials for a launch: a new agent token (the old one stops working;
    /// only its hash is kept, so its plaintext only ever lives in the running launch) and a new
    /// model-server API key (kept, for the load balancer to send).
    pub async fn rotate_credentials(&self, id: &str) -> Result<NodeCredentials, FleetError> {
        let entry = self.entry(id).await?;
        let credentials = NodeCredentials {
            token: token::generate(),
            model_key: token::generate(),
        };
        let hash = token::hash(&credentials.token);
        retrying!(entry, |live| async {
            let mut node = live.node.clone();
            node.token_hash = hash.clone();
            node.model_key = Some(credentials.model_key.clone());
            self.save(live, node, None).await
        })?;
        Ok(credentials)
    }

    /// Stores `node` (with its event) as the node's new state, if nobody changed it meanwhile;
    /// after losing such a race, `live` is re-read and the error is [`StoreError::Conflict`],
    /// so the caller decides again on fresh state.
    async fn save(
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

    /// Whether `token` is the node's; the node must exist (else [`FleetError::NotFound`]).
    pub async fn token_matches(&self, id: &str, token: &str) -> Result<bool, FleetError> {
        let entry = self.entry(id).await?;
        let live = entry.lock().await;
        Ok(token::matches_hash(token, &live.node.token_hash))
    }

    /// Checks a node token; the node must exist and the token must be that node's.
    async fn authorised(&self, id: &str, token: &str) -> Result<Arc<Mutex<LiveNode>>, FleetError> {
        let entry = self.entry(id).await?;
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
        origin: &endpoint::AgentOrigin,
    ) -> Result<AgentAck, FleetError> {
        let entry = self.authorised(id, token).await?;
        reg.validate()?;
        let refused = {
            let live = entry.lock().await;
            registration_refused(&live.node, &reg, origin)
        };
        if let Some((code, message)) = refused {
            tracing::warn!(node_id = %id, source = %origin.peer, code, reason = %message, "agent registration refused");
            self.store
                .insert_node_event(id, now_ms(), "registration_refused", &message)
                .await?;
            return Err(FleetError::Refused { code, message });
        }
        retrying!(entry, |live| async {
            self.apply_registration(live, reg.clone()).await?;
            Ok(self.ack(&live.node))
        })
    }

    async fn apply_registration(
        &self,
        live: &mut LiveNode,
        reg: Registration,
    ) -> Result<(), FleetError> {
        let id = live.node.id.clone();
        if live.node.status == NodeStatus::Terminated {
            return Err(FleetError::Terminated(id));
        }
        let now = now_ms();
        let mut node = live.node.clone();
        node.provider = reg.provider;
        node.region = Some(reg.region);
        node.zone = reg.zone;
        // The model is the admin's or the launch's (checked in `register`); so is a pinned
        // endpoint, whatever the agent reports.
        if !node.endpoint_pinned {
            node.endpoint_url = Some(reg.endpoint_url);
        }
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
        self.save(live, node, change).await?;
        if let Some(t) = &transition {
            self.count_transition(t);
        }
        tracing::info!(node_id = %id, status = %live.node.status, provider = %live.node.provider, "agent registered");
        live.last_seen_ms = now;
        Ok(())
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
        let report = &mut Some(report);
        retrying!(entry, |live| async {
            self.apply_report(live, report).await?;
            Ok(self.ack(&live.node))
        })
    }

    /// Applies a heartbeat. The report is taken only once it is applied: a status change that
    /// lost a race works on a copy, so the retry still has the report.
    async fn apply_report(
        &self,
        live: &mut LiveNode,
        report: &mut Option<HeartbeatReport>,
    ) -> Result<(), FleetError> {
        let pending = report
            .as_ref()
            .expect("a report is taken only when applied, which ends the retries");
        let id = live.node.id.clone();
        match live.node.status {
            NodeStatus::Terminated => return Err(FleetError::Terminated(id)),
            NodeStatus::Launching => return Err(FleetError::NotRegistered(id)),
            _ => {}
        }
        let now = now_ms();
        let signal = HeartbeatSignal {
            health_score: pending.health_score,
            model_ready: pending.model_ready(),
            spot_notice: pending.spot_interruption.as_ref().map(|n| n.describe()),
            going_away: pending.going_away,
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
            record_telemetry(&mut node, pending.clone(), now);
            self.apply(live, node, t, kind, now).await?;
        } else if let Some(report) = report.take() {
            // The common case, on every heartbeat: the report moves, no copy.
            record_telemetry(&mut live.node, report, now);
            self.dirty
                .lock()
                .expect("dirty set lock is never poisoned")
                .insert(id);
            self.changed(&live.node);
        }
        live.last_seen_ms = now;
        Ok(())
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
        let change = StatusChange {
            kind,
            from: Some(from),
            to: t.to,
            reason: &t.reason,
        };
        self.save(live, node, Some(change)).await?;
        self.count_transition(t);
        tracing::info!(node_id = %live.node.id, from = %from, to = %t.to, reason = %t.reason, "node status changed");
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
            desired: if matches!(
                node.status,
                NodeStatus::Draining | NodeStatus::TeardownPending
            ) {
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
    /// Marks a node whose machine a teardown failed to remove: it takes no traffic, and the
    /// teardown is retried until the provider confirms the machine is gone.
    pub async fn teardown_pending(&self, id: &str, reason: &str) -> Result<Node, FleetError> {
        self.admin_transition(id, NodeStatus::TeardownPending, reason)
            .await
    }

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
        let entry = self.entry(id).await?;
        retrying!(entry, |live| async {
            match live.node.status {
                s if s == to => return Ok(live.node.clone()),
                NodeStatus::Terminated => return Err(FleetError::Terminated(id.to_string())),
                // Its machine must go first: only terminating moves it on.
                NodeStatus::TeardownPending if to != NodeStatus::Terminated => {
                    return Ok(live.node.clone())
                }
                _ => {}
            }
            let t = Transition {
                to,
                reason: reason.to_string(),
            };
            let node = live.node.clone();
            self.apply(live, node, &t, "admin", now_ms()).await?;
            Ok(live.node.clone())
        })
    }

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
            match self.apply(&mut live, node, &t, "sweeper", now_ms).await {
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
        Ok(self.entry(id).await?.lock().await.node.clone())
    }

    pub async fn events(&self, id: &str, limit: i64) -> Result<Vec<NodeEvent>, FleetError> {
        self.entry(id).await?;
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

/// Why a registration must be refused, if it must: a model other than the node's, or an
/// endpoint the agent may not use (see [`endpoint`]).
fn registration_refused(
    node: &Node,
    reg: &Registration,
    origin: &endpoint::AgentOrigin,
) -> Option<(&'static str, String)> {
    if reg.model_name != node.model_name {
        return Some((
            "model_mismatch",
            format!(
                "node {} serves {:?}, fixed when it was made; the agent reported {:?}. Point the agent at a model server for {:?}, or create a node for the other model",
                node.id, node.model_name, reg.model_name, node.model_name
            ),
        ));
    }
    if node.endpoint_pinned {
        return None;
    }
    endpoint::check(&reg.endpoint_url, origin, node.on_this_host)
        .err()
        .map(|refused| ("endpoint_refused", refused.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeConfig;

    fn registration() -> Registration {
        serde_json::from_value(serde_json::json!({
            "provider": "aws", "region": "us-east-1", "model_name": "m",
            "endpoint_url": "http://127.0.0.1:9", "gpu_type": "L4",
            "instance_type": "g6.xlarge", "spot_instance": false
        }))
        .unwrap()
    }

    fn healthy() -> HeartbeatReport {
        serde_json::from_value(serde_json::json!({
            "health_score": 0.9, "model_server": {"ready": true}
        }))
        .unwrap()
    }

    /// Two fleets on one database stand for two processes that have not heard of each other's
    /// change yet: a heartbeat on A after a drain on B must not write `ready` over `draining`.
    #[tokio::test]
    async fn a_write_on_a_stale_copy_rereads_and_decides_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&Store::sqlite_url_for(dir.path()))
            .await
            .unwrap();
        let policy = ServeConfig::defaults().health_policy();
        let metrics = Arc::new(Metrics::default());
        let a = Fleet::load(store.clone(), policy.clone(), metrics.clone())
            .await
            .unwrap();
        let (node, token) = a
            .create_node(
                NewNode {
                    name: "shared".into(),
                    model_name: "m".into(),
                    endpoint_url: None,
                    provider: Some("local".into()),
                    labels: None,
                },
                None,
            )
            .await
            .unwrap();
        let origin = endpoint::AgentOrigin {
            peer: "127.0.0.1".parse().unwrap(),
            own: Vec::new(),
            loopback_ok: false,
        };
        a.register(&node.id, &token, registration(), &origin)
            .await
            .unwrap();
        let b = Fleet::load(store.clone(), policy, metrics).await.unwrap();
        b.drain(&node.id, "drained on B").await.unwrap();

        // A still believes the node is registered; its heartbeat would make it ready.
        assert_eq!(
            a.get(&node.id).await.unwrap().status,
            NodeStatus::Registered
        );
        let ack = a.heartbeat(&node.id, &token, healthy()).await.unwrap();
        assert_eq!(ack.status, NodeStatus::Draining);
        assert_eq!(ack.desired, "drain");
        let stored = store.load_node(&node.id).await.unwrap().unwrap();
        assert_eq!(stored.status, NodeStatus::Draining);
        assert_eq!(a.get(&node.id).await.unwrap().status, NodeStatus::Draining);

        // Now B's copy falls behind (A issues a new token); B's terminate re-reads and lands.
        let new_token = a.rotate_token(&node.id).await.unwrap();
        let terminated = b.terminate(&node.id, "gone").await.unwrap();
        assert_eq!(terminated.status, NodeStatus::Terminated);
        let stored = store.load_node(&node.id).await.unwrap().unwrap();
        assert_eq!(stored.status, NodeStatus::Terminated);
        assert!(
            token::matches_hash(&new_token, &stored.token_hash),
            "A's token kept"
        );
    }
}
