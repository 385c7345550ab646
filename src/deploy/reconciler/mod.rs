//! The reconciler: observe → plan → act, for every deployment, on a timer and whenever one of
//! its nodes changes.
//!
//! - Observe: the deployments and their open actions (database), their nodes (the fleet's live
//!   copy), the outcome of their launches (database; final outcomes cached), and for draining
//!   nodes the requests still in flight.
//! - Plan: [`plan::plan`], a pure function.
//! - Act: store each planned action under its deterministic id (a second process or a repeated
//!   tick writes nothing new), cancel pending actions whose drift went away, and run approved
//!   ones. A launch is queued in the same transaction that moves its action to `running`, so a
//!   crash leaves either both or neither; drains and terminations are claimed with a lease and
//!   are idempotent, so a claim whose process died is simply run again by another.
//!
//! Nothing is written when a deployment is converged: a tick that finds no drift only reads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::model::{Action, ActionKind, ActionState, Deployment, DeploymentStatus, Drift, Risk};
use super::plan::{self, Observation, Plan, Planned, ReplicaState};
use super::spec::{DeploymentRequest, Market};
use crate::clock::now_ms;
use crate::fleet::node::{Membership, Node};
use crate::fleet::status::NodeStatus;
use crate::fleet::Fleet;
use crate::launch::failure::ErrorCode;
use crate::launch::job::JobStatus;
use crate::launch::runner::JobRunner;
use crate::launch::{operations, LaunchOpError};
use crate::metrics::{Counter, Histogram, Metrics};
use crate::routing::RoutingTable;
use crate::store::{Store, StoreError};

mod observe;
mod replicas;
mod scaling;

pub use observe::node_market;

/// Launch failures of one revision in a row (other than capacity) that stop its rollout.
pub const ROLLOUT_FAILURE_LIMIT: i64 = 3;
/// Longest capacity back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);
/// A draining replica is terminated no sooner than this after it started draining, so every
/// process has seen it leave the routing table.
const MIN_DRAIN: Duration = Duration::from_secs(2);

/// How a launch ended: its status, its error code, and when.
type JobOutcome = (JobStatus, Option<ErrorCode>, i64);

/// What the reconciler reads of a replica's launch job: the market it asked for, and how it
/// ended (once it did).
#[derive(Debug, Clone, Copy)]
struct JobFacts {
    use_spot: bool,
    outcome: Option<JobOutcome>,
}

#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    pub interval: Duration,
    pub unhealthy_grace: Duration,
    pub drain_timeout: Duration,
    pub backoff: Duration,
    /// How long a claim on a drain or terminate action lasts.
    pub action_lease: Duration,
    /// Least time between two tries to move an on-demand fallback replica back to spot.
    pub spot_swap_back_every: Duration,
    /// A ready replica whose agent has not reported for this long makes the autoscaler's
    /// signal stale (no scale-down on it).
    pub stale_report: Duration,
    /// Most requests that may wait for one deployment's cold start (per process).
    pub cold_start_max_held: usize,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        ReconcilerSettings {
            interval: Duration::from_secs(2),
            unhealthy_grace: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(120),
            backoff: Duration::from_secs(30),
            action_lease: Duration::from_secs(15 * 60),
            spot_swap_back_every: Duration::from_secs(10 * 60),
            stale_report: Duration::from_secs(30),
            cold_start_max_held: 100,
        }
    }
}

/// What the reconciler knows about a deployment after its last tick, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct DeploymentGauge {
    pub desired: i64,
    pub ready: usize,
}

pub struct Reconciler {
    /// Itself, for the drains and terminations it runs on tasks of their own.
    me: std::sync::Weak<Reconciler>,
    /// Drain and terminate actions this process runs now: a slow teardown (`sky down` takes
    /// minutes) runs beside the passes, never inside one, and never twice at once here.
    retiring: Mutex<HashSet<String>>,
    store: Store,
    fleet: Arc<Fleet>,
    runner: Arc<JobRunner>,
    table: Arc<RoutingTable>,
    metrics: Arc<Metrics>,
    settings: ReconcilerSettings,
    /// Names this process in action leases.
    owner: String,
    wake: Notify,
    /// When this process first saw each node unhealthy / draining.
    unhealthy_since: Mutex<HashMap<String, i64>>,
    draining_since: Mutex<HashMap<String, i64>>,
    /// Final launch outcomes by job id (they never change).
    jobs: Mutex<HashMap<String, JobFacts>>,
    /// Stored specs by (uid, revision) (they never change).
    revisions: Mutex<HashMap<(String, i64), DeploymentRequest>>,
    gauges: Mutex<Vec<(String, DeploymentGauge)>>,
    /// For each replacement this process planned: the model's failed answers at that moment,
    /// so its completion can say how many requests failed meanwhile.
    failed_before: Mutex<HashMap<String, u64>>,
    /// When this process last tried each deployment's on-demand fallback on spot again.
    spot_trials: Mutex<HashMap<String, i64>>,
    /// The autoscaler's memory per deployment uid: how long the metric has been out of band,
    /// and the request counts it takes `rps` from.
    scaling: Mutex<HashMap<String, scaling::ScaleMemory>>,
    writes: Counter,
    ticks: Histogram,
}

const ACTIONS: &str = "skylaunch_deployment_actions_total";
const ACTIONS_HELP: &str =
    "Deployment actions by kind and outcome (started, completed, failed, cancelled, rejected).";
const WRITES: &str = "skylaunch_reconciler_writes_total";
const WRITES_HELP: &str =
    "Database writes the deployments' reconciler made (none while every deployment is converged).";
const TICK: &str = "skylaunch_reconciler_tick_seconds";
const TICK_HELP: &str = "Time one reconciler pass over every deployment took.";
const FAILED_MEANWHILE: &str = "skylaunch_deployment_replacement_failed_requests_total";
const FAILED_MEANWHILE_HELP: &str = "Requests for a deployment's model answered with a server error while one of its replicas was being replaced (counted by the process that planned the replacement), by drift.";
const REPLACE: &str = "skylaunch_deployment_replacement_seconds";
const REPLACE_HELP: &str = "Seconds from a replica's failure, preemption notice or outdating (its action) to its replacement being ready, by drift.";

impl Reconciler {
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        runner: Arc<JobRunner>,
        table: Arc<RoutingTable>,
        metrics: Arc<Metrics>,
        settings: ReconcilerSettings,
    ) -> Arc<Reconciler> {
        Arc::new_cyclic(|me| Reconciler {
            me: me.clone(),
            retiring: Mutex::default(),
            store,
            fleet,
            runner,
            table,
            settings,
            owner: uuid::Uuid::new_v4().simple().to_string(),
            wake: Notify::new(),
            unhealthy_since: Mutex::default(),
            draining_since: Mutex::default(),
            jobs: Mutex::default(),
            revisions: Mutex::default(),
            gauges: Mutex::default(),
            failed_before: Mutex::default(),
            spot_trials: Mutex::default(),
            scaling: Mutex::default(),
            writes: metrics.counter(WRITES, WRITES_HELP, &[]),
            ticks: metrics.histogram(TICK, TICK_HELP, &[]),
            metrics,
        })
    }

    /// Something changed (a deployment, an approval, a replica): look now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Desired and ready replicas per deployment, as of the last tick.
    pub fn gauges(&self) -> Vec<(String, DeploymentGauge)> {
        self.gauges.lock().expect("gauges lock").clone()
    }

    /// Runs ticks until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let started = std::time::Instant::now();
            let ticked = self.tick().await;
            self.ticks.observe(started.elapsed().as_secs_f64());
            if let Err(e) = ticked {
                tracing::warn!(error = %e, "reconciling deployments failed; trying again at the next tick");
            }
            tokio::select! {
                _ = self.table.cold.demand.notified() => {}
                _ = self.wake.notified() => {
                    // Let a burst of changes settle into one tick.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = tokio::time::sleep(self.settings.interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass over every deployment.
    pub async fn tick(&self) -> Result<(), StoreError> {
        let deployments = self.store.deployments().await?;
        let open = self.store.open_actions().await?;
        let nodes = self.fleet.list().await;
        // After the reads: what this pass stores is never dated before what it read.
        let now = now_ms();
        self.track_since(&nodes, now);
        // Models whose deployment may scale to zero: their requests wait for a cold start.
        let cold: Vec<_> = deployments
            .iter()
            .filter(|d| !d.deleting)
            .filter_map(|d| {
                let policy = d.spec.autoscale.as_ref().filter(|a| a.min_replicas == 0)?;
                Some((
                    d.spec.model.clone(),
                    crate::routing::cold::ColdStartLimits {
                        timeout: policy.cold_start_timeout(),
                        max_held: self.settings.cold_start_max_held,
                    },
                ))
            })
            .collect();
        self.table.cold.set(&cold);
        // Each model's routing policy (a deleted deployment's goes with it).
        let routes: Vec<_> = deployments
            .iter()
            .filter(|d| !d.deleting)
            .map(|d| (d.spec.model.clone(), d.spec.routing.clone()))
            .collect();
        self.table.set_routes(&routes);
        let mut gauges = Vec::new();
        for d in deployments {
            let mine: Vec<&Node> = nodes
                .iter()
                // Nodes of an earlier deployment of the same name are not this one's.
                .filter(|n| {
                    n.deployment.as_deref() == Some(d.name.as_str()) && n.created_at >= d.created_at
                })
                .collect();
            let actions: Vec<&Action> = open.iter().filter(|a| a.uid == d.uid).collect();
            match self.reconcile(&d, &mine, &actions, now).await {
                Ok(gauge) => gauges.push((d.name.clone(), gauge)),
                Err(e) => {
                    tracing::warn!(deployment = %d.name, error = %e, "could not reconcile the deployment; trying again at the next tick")
                }
            }
        }
        *self.gauges.lock().expect("gauges lock") = gauges;
        Ok(())
    }

    /// Remembers when each node was first seen unhealthy and draining (forgotten once it is not).
    fn track_since(&self, nodes: &[Node], now: i64) {
        let mut unhealthy = self.unhealthy_since.lock().expect("lock");
        let mut draining = self.draining_since.lock().expect("lock");
        let mut seen_u = HashSet::new();
        let mut seen_d = HashSet::new();
        for n in nodes.iter().filter(|n| n.deployment.is_some()) {
            if n.status == NodeStatus::Unhealthy {
                unhealthy.entry(n.id.clone()).or_insert(now);
                seen_u.insert(n.id.as_str());
            }
            if n.status == NodeStatus::Draining {
                draining.entry(n.id.clone()).or_insert(now);
                seen_d.insert(n.id.as_str());
            }
        }
        unhealthy.retain(|id, _| seen_u.contains(id.as_str()));
        draining.retain(|id, _| seen_d.contains(id.as_str()));
    }

    async fn reconcile(
        &self,
        d: &Deployment,
        nodes: &[&Node],
        actions: &[&Action],
        now: i64,
    ) -> Result<DeploymentGauge, ReconcileError> {
        // Launches that ended since the last tick.
        let mut d = d.clone();
        for a in actions
            .iter()
            .filter(|a| a.state == ActionState::Running && a.kind.launches())
        {
            if self.follow_launch(&mut d, a, now).await? {
                // The deployment's counters changed; read it again.
                if let Some(fresh) = self.store.deployment(&d.name).await? {
                    d = fresh;
                }
            }
        }
        let replicas = self.observe(&d, nodes, now).await?;
        if d.spec.autoscale.is_some() && !d.deleting {
            let (scaled, moved) = self.autoscale(d, nodes, &replicas, now).await?;
            d = scaled;
            if moved {
                // Replicas changed slots: plan on the next pass, with them where they are now.
                self.wake();
                return Ok(DeploymentGauge {
                    desired: d.desired(),
                    ready: replicas
                        .iter()
                        .filter(|r| r.status == NodeStatus::Ready && !r.dead)
                        .count(),
                });
            }
        }
        let hourly = hourly_usd(&d.spec, &replicas);
        let spot_trial_due = self
            .spot_trials
            .lock()
            .expect("lock")
            .get(&d.uid)
            .is_none_or(|last| now - last >= self.settings.spot_swap_back_every.as_millis() as i64);
        let plan = plan::plan(&Observation {
            deployment: &d,
            replicas: &replicas,
            hourly_usd: hourly,
            now,
            spot_trial_due,
        });
        if d.deleting && nodes.iter().all(|n| n.status == NodeStatus::Terminated) {
            let launching = actions
                .iter()
                .any(|a| a.state == ActionState::Running && a.kind.launches());
            if !launching {
                self.store_write().remove_deployment(&d).await?;
                tracing::info!(deployment = %d.name, "deployment deleted: every replica is terminated");
                return Ok(DeploymentGauge::default());
            }
        }
        self.save_status(&d, &plan, now).await?;
        let planned: HashMap<&str, &Planned> =
            plan.actions.iter().map(|p| (p.id.as_str(), p)).collect();
        // Pending actions whose drift went away are cancelled; approved and running ones are
        // the admin's or already under way, and stay.
        for a in actions
            .iter()
            .filter(|a| !planned.contains_key(a.id.as_str()))
        {
            let auto_approved_launch =
                a.state == ActionState::Approved && a.risk == Risk::Low && a.kind.launches();
            if a.state != ActionState::Pending && !auto_approved_launch {
                continue;
            }
            let removed = d.deleting || a.slot.is_some_and(|s| s >= d.desired());
            let reason = if removed {
                "deployment_removed"
            } else {
                "drift_resolved_auto"
            };
            if self
                .store_write()
                .set_action_state(&a.id, a.state, ActionState::Cancelled, Some(reason), now)
                .await?
            {
                self.count(a.kind, "cancelled");
                tracing::info!(deployment = %d.name, action = %a.id, kind = a.kind.as_str(), reason, "action cancelled");
            }
        }
        let known: HashMap<&str, &&Action> = actions.iter().map(|a| (a.id.as_str(), a)).collect();
        for p in plan.actions.iter().filter(|p| !p.blocked) {
            let state = match known.get(p.id.as_str()) {
                Some(a) => a.state,
                None => match self.store_planned(&d, p, now).await? {
                    Some(state) => state,
                    None => continue,
                },
            };
            if state == ActionState::Approved
                || (state == ActionState::Running && !p.kind.launches())
            {
                self.act(&d, p, now).await?;
            }
        }
        Ok(DeploymentGauge {
            desired: d.desired(),
            ready: plan.ready,
        })
    }

    /// Stores a planned action unless one with its id exists; returns the state it has now, or
    /// `None` when it is final (done before; nothing more to do).
    async fn store_planned(
        &self,
        d: &Deployment,
        p: &Planned,
        now: i64,
    ) -> Result<Option<ActionState>, StoreError> {
        if let Some(existing) = self.store.action(&p.id).await? {
            return Ok((!existing.state.is_final()).then_some(existing.state));
        }
        let state = match p.risk {
            Risk::Low => ActionState::Approved,
            Risk::Guarded => ActionState::Pending,
        };
        let action = Action {
            id: p.id.clone(),
            deployment: d.name.clone(),
            uid: d.uid.clone(),
            revision: d.revision,
            slot: p.slot,
            kind: p.kind,
            drift: p.drift,
            risk: p.risk,
            state,
            market: p.market,
            reason: Some(p.reason.clone()),
            node_id: p.node_id.clone(),
            launch_job_id: None,
            created_at: now,
            updated_at: now,
        };
        if plan::is_swap_back(action.kind, action.drift) {
            self.spot_trials
                .lock()
                .expect("lock")
                .insert(d.uid.clone(), now);
        }
        if action.kind == ActionKind::ReplaceReplica {
            self.failed_before
                .lock()
                .expect("lock")
                .insert(action.id.clone(), self.table.failed_answers(&d.spec.model));
        }
        if self.store_write().insert_action(&action).await? {
            tracing::info!(deployment = %d.name, action = %action.id, kind = action.kind.as_str(), drift = action.drift.as_str(), state = state.as_str(), reason = %p.reason, "action planned");
            return Ok(Some(state));
        }
        // Another process stored it first.
        Ok(self
            .store
            .action(&p.id)
            .await?
            .filter(|a| !a.state.is_final())
            .map(|a| a.state))
    }

    /// Runs an approved action (or takes over a drain or termination whose claimant died).
    async fn act(&self, d: &Deployment, p: &Planned, now: i64) -> Result<(), ReconcileError> {
        match p.kind {
            ActionKind::LaunchReplica | ActionKind::ReplaceReplica => self.launch(d, p, now).await,
            ActionKind::DrainReplica | ActionKind::TerminateReplica => {
                if self.retiring.lock().expect("lock").contains(&p.id) {
                    return Ok(());
                }
                let lease_until = now + self.settings.action_lease.as_millis() as i64;
                if !self
                    .store_write()
                    .claim_action(&p.id, &self.owner, lease_until, now)
                    .await?
                {
                    return Ok(());
                }
                let Some(me) = self.me.upgrade() else {
                    return Ok(());
                };
                self.retiring.lock().expect("lock").insert(p.id.clone());
                let (deployment, action) = (d.name.clone(), p.clone());
                tokio::spawn(async move {
                    if let Err(e) = me.retire(&deployment, &action).await {
                        tracing::warn!(deployment = %deployment, action = %action.id, error = %e, "could not record the action's outcome; it is run again once its lease lapses");
                    }
                    me.retiring.lock().expect("lock").remove(&action.id);
                    me.wake();
                });
                Ok(())
            }
        }
    }

    /// Writes the deployment's status and reason when the plan changed them (nothing when the
    /// deployment is as it was: a converged deployment costs no writes).
    async fn save_status(&self, d: &Deployment, plan: &Plan, now: i64) -> Result<(), StoreError> {
        let until = match plan.status {
            DeploymentStatus::Unsatisfiable => d.unsatisfiable_until,
            _ => d.unsatisfiable_until.filter(|u| *u > now),
        };
        if plan.status == d.status && plan.reason == d.reason && until == d.unsatisfiable_until {
            return Ok(());
        }
        let mut changed = d.clone();
        changed.status = plan.status;
        changed.reason = plan.reason.clone();
        changed.unsatisfiable_until = until;
        changed.updated_at = now;
        if self.store_write().save_deployment_state(&changed).await? && plan.status != d.status {
            tracing::info!(deployment = %d.name, from = d.status.as_str(), to = plan.status.as_str(), reason = plan.reason.as_deref().unwrap_or(""), "deployment status changed");
        }
        Ok(())
    }

    /// The store, for a write: every write the reconciler makes is counted, so a benchmark can
    /// check that a converged deployment costs none.
    fn store_write(&self) -> &Store {
        self.writes.inc();
        &self.store
    }

    fn count(&self, kind: ActionKind, outcome: &str) {
        self.metrics.inc(
            ACTIONS,
            ACTIONS_HELP,
            &[("kind", kind.as_str()), ("outcome", outcome)],
        );
    }
}

/// The estimated hourly cost of a deployment's live replicas.
pub fn hourly_usd(spec: &DeploymentRequest, replicas: &[ReplicaState]) -> f64 {
    replicas
        .iter()
        .filter(|r| r.status != NodeStatus::Terminated)
        .map(|r| spec.replica_hourly_usd(r.market))
        .sum()
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Launch(#[from] LaunchOpError),
}
