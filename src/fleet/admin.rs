//! What admins and launches do to nodes: create one, drain it, mark it teardown-pending or
//! terminated, issue its credentials, read and record its events.

use super::events::{NodeEvent, NodeEventKind};
use super::live::{retrying, LiveNode};
use super::node::{Membership, NewNode, Node};
use super::status::{NodeStatus, Transition};
use super::store::StatusChange;
use super::{token, Fleet, FleetError, NodeCredentials};
use crate::clock::now_ms;
use crate::store::StoreError;

impl Fleet {
    /// Adds a node whose agent will register later; returns it with its one-time token.
    pub async fn create_node(
        &self,
        new: NewNode,
        launch_job_id: Option<String>,
    ) -> Result<(Node, String), FleetError> {
        let mut tx = self.store.pool().begin().await.map_err(StoreError::from)?;
        let (node, token) = self
            .create_node_in(&mut tx, new, launch_job_id, None)
            .await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok((self.node_created(node), token))
    }

    /// [`Fleet::create_node`]'s write inside the caller's transaction (a launch stores its job
    /// with its node). Once that commits, hand the node to [`Fleet::node_created`]; until then
    /// this process's fleet does not know it. A deployment's replica is made with its
    /// `membership`.
    pub async fn create_node_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        new: NewNode,
        launch_job_id: Option<String>,
        membership: Option<Membership>,
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
            deployment: membership.as_ref().map(|m| m.deployment.clone()),
            deployment_revision: membership.as_ref().map(|m| m.revision),
            deployment_slot: membership.as_ref().map(|m| m.slot),
            registered_at: None,
            created_at: now,
            updated_at: now,
            token_hash: token::hash(&token),
            revision: 0,
        };
        let change = StatusChange {
            kind: NodeEventKind::Created,
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
        self.counters.transition(NodeStatus::Launching);
        tracing::info!(node_id = %node.id, name = %node.name, "node created");
        // Already here only if this process read it from the database since the commit (a
        // launch claimed at once): that copy is as new or newer.
        self.insert_new(LiveNode {
            node: node.clone(),
            last_seen_ms: node.updated_at,
        });
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

    /// Swaps two deployment replicas' slots (a scale-down moves the replicas it retires into
    /// the slots it removes). Both change in one write; neither if either changed meanwhile.
    pub async fn swap_slots(&self, a: &str, b: &str) -> Result<(), FleetError> {
        let (first, second) = if a < b { (a, b) } else { (b, a) };
        let (first, second) = (self.entry(first).await?, self.entry(second).await?);
        let mut one = first.lock().await;
        let mut two = second.lock().await;
        if let Err(e) = self.store.swap_node_slots(&one.node, &two.node).await {
            if matches!(e, StoreError::Conflict(_)) {
                self.reread(&mut one).await?;
                self.reread(&mut two).await?;
            }
            return Err(e.into());
        }
        std::mem::swap(&mut one.node.deployment_slot, &mut two.node.deployment_slot);
        for live in [&mut one, &mut two] {
            live.node.revision += 1;
            self.changed(&live.node);
        }
        Ok(())
    }

    /// Admin: stop sending new traffic to a node.
    pub async fn drain(&self, id: &str, reason: &str) -> Result<Node, FleetError> {
        self.admin_transition(id, NodeStatus::Draining, reason)
            .await
    }

    /// Marks a node whose machine a teardown failed to remove: it takes no traffic, and the
    /// teardown is retried until the provider confirms the machine is gone.
    pub async fn teardown_pending(&self, id: &str, reason: &str) -> Result<Node, FleetError> {
        self.admin_transition(id, NodeStatus::TeardownPending, reason)
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
            self.apply_transition(live, node, &t, NodeEventKind::Admin, now_ms())
                .await?;
            Ok(live.node.clone())
        })
    }

    /// The node's newest events, newest first; the node must exist.
    pub async fn events(&self, id: &str, limit: i64) -> Result<Vec<NodeEvent>, FleetError> {
        self.entry(id).await?;
        Ok(self.store.recent_node_events(id, limit).await?)
    }

    /// Records something that happened to a node without changing its status (the load
    /// balancer ejecting it for a while, a failed teardown retry, a refused registration).
    pub async fn record_event(
        &self,
        id: &str,
        kind: NodeEventKind,
        reason: &str,
    ) -> Result<(), FleetError> {
        Ok(self
            .store
            .insert_node_event(id, now_ms(), kind, reason)
            .await?)
    }
}
