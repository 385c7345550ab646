//! Observe: what each of a deployment's nodes is doing, as the plan needs it (its revision, its
//! launch's outcome, how long it has been unhealthy or draining, its market).

use super::{Reconciler, MIN_DRAIN};
use crate::deploy::model::Deployment;
use crate::deploy::plan::ReplicaState;
use crate::deploy::spec::Market;
use crate::fleet::node::Node;
use crate::fleet::status::NodeStatus;
use crate::launch::failure::ErrorCode;
use crate::launch::job::JobStatus;
use crate::store::{Store, StoreError};

impl Reconciler {
    /// What each of the deployment's nodes is doing, as the plan needs it.
    pub(super) async fn observe(
        &self,
        d: &Deployment,
        nodes: &[&Node],
        now: i64,
    ) -> Result<Vec<ReplicaState>, StoreError> {
        let grace = self.settings.unhealthy_grace.as_millis() as i64;
        let drain_timeout = self.settings.drain_timeout.as_millis() as i64;
        let mut out = Vec::with_capacity(nodes.len());
        for n in nodes {
            let revision = n.deployment_revision.unwrap_or_default();
            let current = revision == d.revision || self.same_as_current(d, revision).await?;
            // Only the current revision's launch outcomes matter to the plan (back-off,
            // fallbacks); a replica not registered yet has its market from its launch too.
            let facts = match &n.launch_job_id {
                Some(job) if revision == d.revision || n.registered_at.is_none() => {
                    self.job_facts(job).await?
                }
                _ => None,
            };
            let outcome = facts
                .filter(|_| revision == d.revision)
                .and_then(|f| f.outcome);
            let unhealthy_for = self
                .unhealthy_since
                .lock()
                .expect("lock")
                .get(&n.id)
                .map(|since| now - since);
            // A replica whose launch still runs is loading its model (unhealthy until its
            // model server answers, which takes minutes for a large model): its launch's own
            // timeout judges it, not the unhealthy grace.
            let still_launching =
                revision == d.revision && facts.is_some_and(|f| f.outcome.is_none());
            let dead = n.status == NodeStatus::Offline
                || (n.status == NodeStatus::Unhealthy
                    && !still_launching
                    && unhealthy_for.is_some_and(|t| t >= grace));
            let draining_for = self
                .draining_since
                .lock()
                .expect("lock")
                .get(&n.id)
                .map(|since| now - since);
            let quiet = self.table.in_flight(&n.id) == 0
                && n.last_heartbeat
                    .as_ref()
                    .and_then(|h| h.queue.as_ref())
                    .and_then(|q| q.running)
                    .is_none_or(|running| running < 0.5);
            let drained = n.status == NodeStatus::Draining
                && draining_for.is_some_and(|t| {
                    (t >= MIN_DRAIN.as_millis() as i64 && quiet) || t >= drain_timeout
                });
            let spot_notice = n.status == NodeStatus::Draining
                && (n
                    .status_reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("spot interruption notice"))
                    || n.last_heartbeat
                        .as_ref()
                        .is_some_and(|h| h.spot_interruption.is_some()));
            let market = market_of(n, facts.map(|f| f.use_spot));
            out.push(ReplicaState {
                node_id: n.id.clone(),
                status: n.status,
                revision,
                slot: n.deployment_slot.unwrap_or_default(),
                created_at: n.created_at,
                market,
                current,
                dead,
                spot_notice,
                drained,
                launch_succeeded: outcome.is_some_and(|(s, _, _)| s == JobStatus::Succeeded),
                launch_failed: outcome.and_then(|(s, code, _)| {
                    (s == JobStatus::Failed).then_some(code.unwrap_or(ErrorCode::Internal))
                }),
            });
        }
        Ok(out)
    }

    /// Whether `revision` runs what the deployment's current revision runs (after a rollback,
    /// or a spec put back as it was, the replicas that run it are kept).
    async fn same_as_current(&self, d: &Deployment, revision: i64) -> Result<bool, StoreError> {
        let key = (d.uid.clone(), revision);
        let cached = self.revisions.lock().expect("lock").get(&key).cloned();
        let spec = match cached {
            Some(spec) => spec,
            None => match self.store.deployment_revision(&d.uid, revision).await? {
                Some(spec) => {
                    self.revisions
                        .lock()
                        .expect("lock")
                        .insert(key, spec.clone());
                    spec
                }
                None => return Ok(false),
            },
        };
        Ok(!spec.runs_differently(&d.spec))
    }
}

/// A replica's market: what its agent reported once registered, before that what its launch
/// asked for.
pub async fn node_market(store: &Store, n: &Node) -> Result<Market, StoreError> {
    let asked_spot = match (&n.launch_job_id, n.registered_at) {
        (Some(job_id), None) => store.job(job_id).await?.map(|job| job.spec.use_spot),
        _ => None,
    };
    Ok(market_of(n, asked_spot))
}

/// [`node_market`] given whether its launch asked for spot (when that was read).
fn market_of(n: &Node, asked_spot: Option<bool>) -> Market {
    let spot = if n.registered_at.is_some() {
        n.spot_instance
    } else {
        asked_spot.unwrap_or(false)
    };
    if spot {
        Market::Spot
    } else {
        Market::OnDemand
    }
}
