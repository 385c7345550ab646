//! What the admin API asks of deployments, each as one operation, and the view it answers with.
//! Every change is validated before anything is stored, then wakes the reconciler, which does
//! the work.

use std::sync::Arc;

use serde::Serialize;

use super::model::{Action, ActionState, Deployment, DeploymentStatus};
use super::reconciler::Reconciler;
use super::spec::{DeploymentRequest, Market, MAX_REPLICAS};
use crate::clock::{now_ms, serde_opt_rfc3339, serde_rfc3339};
use crate::fleet::node::Node;
use crate::fleet::status::NodeStatus;
use crate::fleet::Fleet;
use crate::launch::runner::JobRunner;
use crate::launch::spec::{SpecError, SECRET_SHOWN};
use crate::launch::{operations as launch_ops, LaunchOpError};
use crate::store::{Store, StoreError};

use super::model::ReplicaRow;

/// Why a deployment operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{}", .0.message)]
    Invalid(SpecError),
    #[error("no deployment named {0:?}")]
    NotFound(String),
    #[error("a deployment named {0:?} exists already")]
    NameTaken(String),
    #[error("deployment {0:?} is being deleted")]
    Deleting(String),
    #[error("no action with id {0:?}")]
    ActionNotFound(String),
    #[error("action {id} is {}, not pending: only a pending action can be approved or rejected", .state.as_str())]
    ActionNotPending { id: String, state: ActionState },
    #[error("deployment {0:?} has no earlier revision to roll back to")]
    NoPreviousRevision(String),
    #[error("deployment {0:?} was changed by another request meanwhile; read it and try again")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<SpecError> for DeployError {
    fn from(e: SpecError) -> Self {
        DeployError::Invalid(e)
    }
}

impl From<LaunchOpError> for DeployError {
    fn from(e: LaunchOpError) -> Self {
        match e {
            LaunchOpError::Invalid(e) => DeployError::Invalid(e),
            LaunchOpError::Store(e) => DeployError::Store(e),
            other => DeployError::Internal(other.to_string()),
        }
    }
}

/// Replica counts over a deployment's live nodes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplicaCounts {
    pub desired: i64,
    pub ready: usize,
    pub launching: usize,
    pub draining: usize,
}

/// A deployment as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentView {
    pub name: String,
    pub revision: i64,
    /// The desired state, `envs` values shown as `<secret>`.
    pub spec: DeploymentRequest,
    pub status: DeploymentStatus,
    pub replicas: ReplicaCounts,
    /// Its live replicas (not terminated), by slot.
    pub nodes: Vec<ReplicaRow>,
    /// Estimated cost of its live replicas per hour, in US dollars.
    pub hourly_usd: f64,
    pub reason: Option<String>,
    #[serde(with = "serde_opt_rfc3339")]
    pub unsatisfiable_until: Option<i64>,
    /// Actions waiting for an admin.
    pub pending_actions: usize,
    /// With an autoscale policy: the metric now against its target, and the latest decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleView>,
    #[serde(with = "serde_rfc3339")]
    pub created_at: i64,
    #[serde(with = "serde_rfc3339")]
    pub updated_at: i64,
}

/// The autoscaler's view of a deployment.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AutoscaleView {
    pub metric: crate::deploy::spec::ScaleMetric,
    pub target: f64,
    /// The latest value this process measured, averaged over the policy's `window_s` (per
    /// ready replica; seconds for `ttft`); null before the window has covered a quarter of its
    /// length (it starts over when the ready replicas change) or with nothing to measure.
    pub value: Option<f64>,
    /// Some replica's report is stale: no scale-down until it is fresh again.
    pub stale: bool,
    /// Some ready replica reports its KV cache at least 90 % full: no scale-down while it does.
    pub kv_cache_full: bool,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub last_decision: Option<crate::deploy::model::ScaleDecision>,
    /// `/v1` requests this process holds for the model while a replica starts (scale to zero).
    pub waiting_requests: usize,
}

/// An update may send an `envs` value as `<secret>` (as every answer shows it) to keep the
/// stored value, so a spec read from the API can be changed and sent back whole.
fn keep_secrets(
    mut request: DeploymentRequest,
    current: &DeploymentRequest,
) -> Result<DeploymentRequest, DeployError> {
    for (key, value) in request.envs.iter_mut() {
        if value == SECRET_SHOWN {
            match current.envs.get(key) {
                Some(stored) => *value = stored.clone(),
                None => {
                    return Err(SpecError::invalid(
                        "envs",
                        format!(
                            "envs.{key} is {SECRET_SHOWN:?}, which keeps a stored value, but the deployment has no {key}: send its value"
                        ),
                    )
                    .into())
                }
            }
        }
    }
    Ok(request)
}

/// The deployments service the API calls.
pub struct Deployments {
    pub store: Store,
    pub fleet: Arc<Fleet>,
    pub runner: Arc<JobRunner>,
    pub reconciler: Arc<Reconciler>,
}

impl Deployments {
    /// Validates a new deployment (as its replicas' launches would be, provider checks
    /// included) and stores it; the reconciler launches its replicas.
    pub async fn create(&self, request: DeploymentRequest) -> Result<DeploymentView, DeployError> {
        self.check(&request)?;
        let now = now_ms();
        let d = Deployment {
            name: request.name.clone(),
            uid: uuid::Uuid::new_v4().to_string(),
            revision: 1,
            spec: request,
            status: DeploymentStatus::Converging,
            reason: None,
            unsatisfiable_until: None,
            failures: 0,
            last_failure_at: None,
            deleting: false,
            last_scale: None,
            created_at: now,
            updated_at: now,
        };
        match self.store.insert_deployment(&d).await {
            Ok(()) => {}
            Err(StoreError::Duplicate(_)) => return Err(DeployError::NameTaken(d.name)),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(deployment = %d.name, replicas = d.spec.replicas, model = %d.spec.model, "deployment created");
        self.reconciler.wake();
        self.view(&d.name).await
    }

    /// Replaces the spec: a new revision (and a rolling update) when what replicas run changed.
    pub async fn update(
        &self,
        name: &str,
        request: DeploymentRequest,
    ) -> Result<DeploymentView, DeployError> {
        if request.name != name {
            return Err(SpecError::invalid(
                "name",
                format!(
                    "the body names deployment {:?} but the path {name:?}; a deployment cannot be renamed",
                    request.name
                ),
            )
            .into());
        }
        let current = self.live(name).await?;
        let request = keep_secrets(request, &current.spec)?;
        self.check(&request)?;
        let new_revision = current.spec.runs_differently(&request);
        self.write_spec(current, request, new_revision).await
    }

    /// Sets the replica count (no new revision).
    pub async fn scale(&self, name: &str, replicas: u32) -> Result<DeploymentView, DeployError> {
        if replicas > MAX_REPLICAS {
            return Err(SpecError::invalid(
                "replicas",
                format!("replicas must be from 0 to {MAX_REPLICAS}, got {replicas}"),
            )
            .into());
        }
        let current = self.live(name).await?;
        let mut spec = current.spec.clone();
        spec.replicas = replicas;
        self.write_spec(current, spec, false).await
    }

    /// Rolls back to the revision before the current one (as a new revision that runs what it
    /// ran; replicas that still run it are kept), with the current replica count.
    pub async fn rollback(&self, name: &str) -> Result<DeploymentView, DeployError> {
        let current = self.live(name).await?;
        let previous = match current.revision {
            r if r > 1 => self.store.deployment_revision(&current.uid, r - 1).await?,
            _ => None,
        };
        let Some(mut spec) = previous else {
            return Err(DeployError::NoPreviousRevision(name.to_string()));
        };
        spec.replicas = current.spec.replicas;
        tracing::info!(deployment = %name, from = current.revision, "rolling back to the previous revision");
        self.write_spec(current, spec, true).await
    }

    async fn write_spec(
        &self,
        current: Deployment,
        spec: DeploymentRequest,
        new_revision: bool,
    ) -> Result<DeploymentView, DeployError> {
        let mut d = current.clone();
        if new_revision {
            d.revision += 1;
        }
        d.spec = spec;
        if new_revision {
            d.status = DeploymentStatus::Converging;
        }
        d.updated_at = now_ms();
        if !self
            .store
            .update_deployment_spec(&d, current.revision, new_revision)
            .await?
        {
            return Err(DeployError::Conflict(d.name));
        }
        tracing::info!(deployment = %d.name, revision = d.revision, replicas = d.spec.replicas, new_revision, "deployment spec changed");
        self.reconciler.wake();
        self.view(&d.name).await
    }

    /// Clears `unsatisfiable` (and a failed rollout) and tries again now.
    pub async fn retry(&self, name: &str) -> Result<DeploymentView, DeployError> {
        self.live(name).await?;
        self.store.clear_deployment_backoff(name, now_ms()).await?;
        tracing::info!(deployment = %name, "retry asked: back-off cleared");
        self.reconciler.wake();
        self.view(name).await
    }

    /// Deletes a deployment: its replicas are drained, then terminated, and it disappears when
    /// none is left.
    pub async fn delete(&self, name: &str) -> Result<DeploymentView, DeployError> {
        self.get(name).await?;
        self.store.mark_deployment_deleting(name, now_ms()).await?;
        tracing::info!(deployment = %name, "deployment deleted: retiring its replicas");
        self.reconciler.wake();
        self.view(name).await
    }

    pub async fn approve(&self, id: &str) -> Result<Action, DeployError> {
        self.decide(id, ActionState::Approved).await
    }

    pub async fn reject(&self, id: &str) -> Result<Action, DeployError> {
        self.decide(id, ActionState::Rejected).await
    }

    async fn decide(&self, id: &str, to: ActionState) -> Result<Action, DeployError> {
        let action = self
            .store
            .action(id)
            .await?
            .ok_or_else(|| DeployError::ActionNotFound(id.to_string()))?;
        let reason = match to {
            ActionState::Approved => "approved by an admin",
            _ => "rejected by an admin",
        };
        if !self
            .store
            .set_action_state(id, ActionState::Pending, to, Some(reason), now_ms())
            .await?
        {
            let state = self
                .store
                .action(id)
                .await?
                .map_or(action.state, |a| a.state);
            return Err(DeployError::ActionNotPending {
                id: id.to_string(),
                state,
            });
        }
        tracing::info!(action = %id, deployment = %action.deployment, kind = action.kind.as_str(), decision = to.as_str(), "action decided by an admin");
        self.reconciler.wake();
        Ok(self.store.action(id).await?.unwrap_or(action))
    }

    /// Every deployment, by name.
    pub async fn list(&self) -> Result<Vec<DeploymentView>, DeployError> {
        let nodes = self.fleet.list().await;
        let mut out = Vec::new();
        for d in self.store.deployments().await? {
            out.push(self.view_of(d, &nodes).await?);
        }
        Ok(out)
    }

    pub async fn view(&self, name: &str) -> Result<DeploymentView, DeployError> {
        let d = self.get(name).await?;
        let nodes = self.fleet.list().await;
        self.view_of(d, &nodes).await
    }

    /// A deployment's actions, newest first.
    pub async fn actions(&self, name: &str) -> Result<Vec<Action>, DeployError> {
        let d = self.get(name).await?;
        Ok(self.store.deployment_actions(&d.uid, 500).await?)
    }

    /// Actions of every deployment in `state` (all when `None`), newest first.
    pub async fn actions_in_state(
        &self,
        state: Option<ActionState>,
    ) -> Result<Vec<Action>, DeployError> {
        Ok(self.store.actions_in_state(state, 500).await?)
    }

    async fn get(&self, name: &str) -> Result<Deployment, DeployError> {
        self.store
            .deployment(name)
            .await?
            .ok_or_else(|| DeployError::NotFound(name.to_string()))
    }

    /// A deployment that is not being deleted.
    async fn live(&self, name: &str) -> Result<Deployment, DeployError> {
        let d = self.get(name).await?;
        if d.deleting {
            return Err(DeployError::Deleting(name.to_string()));
        }
        Ok(d)
    }

    fn check(&self, request: &DeploymentRequest) -> Result<(), DeployError> {
        request.validate()?;
        // The provider's own checks, on what a replica's launch would ask.
        let market = if request.spot.use_spot {
            Market::Spot
        } else {
            Market::OnDemand
        };
        let probe = request.launch_request(&request.node_name(1, 0, "000000"), market, true);
        launch_ops::prepare(&self.runner, &probe)?;
        Ok(())
    }

    async fn view_of(&self, d: Deployment, nodes: &[Node]) -> Result<DeploymentView, DeployError> {
        let mine: Vec<&Node> = nodes
            .iter()
            .filter(|n| {
                n.deployment.as_deref() == Some(d.name.as_str()) && n.created_at >= d.created_at
            })
            .collect();
        let live: Vec<&Node> = mine
            .iter()
            .copied()
            .filter(|n| n.status != NodeStatus::Terminated)
            .collect();
        let mut rows = Vec::with_capacity(live.len());
        let mut hourly = 0.0;
        for n in &live {
            let market = super::reconciler::node_market(&self.store, n).await?;
            hourly += d.spec.replica_hourly_usd(market);
            rows.push(ReplicaRow {
                node_id: n.id.clone(),
                name: n.name.clone(),
                status: n.status,
                revision: n.deployment_revision,
                slot: n.deployment_slot,
                market,
                launch_job_id: n.launch_job_id.clone(),
                health_score: n.health_score,
                last_heartbeat_at: n.last_heartbeat_at,
            });
        }
        rows.sort_by(|a, b| a.slot.cmp(&b.slot).then(a.name.cmp(&b.name)));
        let count = |f: &dyn Fn(NodeStatus) -> bool| live.iter().filter(|n| f(n.status)).count();
        let pending_actions = self
            .store
            .deployment_actions(&d.uid, 500)
            .await?
            .iter()
            .filter(|a| a.state == ActionState::Pending)
            .count();
        Ok(DeploymentView {
            replicas: ReplicaCounts {
                desired: d.desired(),
                ready: count(&|s| s == NodeStatus::Ready),
                launching: count(&|s| matches!(s, NodeStatus::Launching | NodeStatus::Registered)),
                draining: count(&|s| {
                    matches!(s, NodeStatus::Draining | NodeStatus::TeardownPending)
                }),
            },
            nodes: rows,
            hourly_usd: (hourly * 100.0).round() / 100.0,
            unsatisfiable_until: d
                .unsatisfiable_until
                .filter(|_| d.status == DeploymentStatus::Unsatisfiable),
            pending_actions,
            autoscale: d.spec.autoscale.as_ref().map(|a| {
                let measured = self.reconciler.scale_signal(&d.uid);
                AutoscaleView {
                    metric: a.metric,
                    target: a.target,
                    value: measured
                        .and_then(|m| m.value)
                        .map(|v| (v * 1000.0).round() / 1000.0),
                    stale: measured.is_some_and(|m| m.stale),
                    kv_cache_full: measured.is_some_and(|m| m.kv_cache_full),
                    min_replicas: a.min_replicas,
                    max_replicas: a.max_replicas,
                    last_decision: d.last_scale.clone(),
                    waiting_requests: self.reconciler.waiting_requests(&d.spec.model),
                }
            }),
            spec: d.spec.masked(),
            name: d.name,
            revision: d.revision,
            status: d.status,
            reason: d.reason,
            created_at: d.created_at,
            updated_at: d.updated_at,
        })
    }
}
