//! The reconciler's plan step, as a pure function: given one deployment and what its replicas
//! are doing, name each drift from the spec and the action that answers it, with its
//! deterministic id, and the deployment's status. No I/O here, so every rule is unit-tested.
//!
//! Replicas live in slots `0..replicas`. A slot is filled by an active replica (not draining,
//! not dead) that runs the current revision; the newest ready one keeps the slot and every other
//! replica in it is superseded (drained if it serves, else terminated). An empty slot gets a
//! launch: `replace_replica` when something in the slot died, was preempted or is outdated,
//! `launch_replica` when nothing was there. Outdated slots are replaced within the rolling
//! update's `max_surge` / `max_unavailable`. Replicas in slots past `replicas` are excess.

use std::collections::BTreeMap;

use super::model::{action_id, ActionKind, Deployment, DeploymentStatus, Drift, Risk};
use super::spec::Market;
use crate::fleet::status::NodeStatus;
use crate::launch::failure::ErrorCode;

/// What the reconciler observed about one node of the deployment (terminated ones included:
/// they count the slot's incarnations).
#[derive(Debug, Clone)]
pub struct ReplicaState {
    pub node_id: String,
    pub status: NodeStatus,
    pub revision: i64,
    pub slot: i64,
    pub created_at: i64,
    pub market: Market,
    /// It runs what the current revision runs (its own revision, or an equal one).
    pub current: bool,
    /// Offline, or unhealthy for longer than the grace period: it serves nothing.
    pub dead: bool,
    /// Draining because its spot VM got an interruption notice.
    pub spot_notice: bool,
    /// Draining, with no request in flight any more (or past the drain timeout).
    pub drained: bool,
    /// Its launch ended with the node ready at some point.
    pub launch_succeeded: bool,
    /// Why its launch failed, when it did.
    pub launch_failed: Option<ErrorCode>,
}

impl ReplicaState {
    fn live(&self) -> bool {
        self.status != NodeStatus::Terminated
    }

    fn leaving(&self) -> bool {
        matches!(
            self.status,
            NodeStatus::Draining | NodeStatus::TeardownPending | NodeStatus::Terminated
        )
    }

    /// Holds or may soon hold its slot: live, not leaving, not dead.
    fn active(&self) -> bool {
        !self.leaving() && !self.dead
    }

    fn ready(&self) -> bool {
        self.status == NodeStatus::Ready && !self.dead
    }
}

/// Everything the plan needs about one deployment.
pub struct Observation<'a> {
    pub deployment: &'a Deployment,
    pub replicas: &'a [ReplicaState],
    /// The estimated hourly cost of its live replicas now.
    pub hourly_usd: f64,
    pub now: i64,
    /// Whether an on-demand replica standing in a spot slot may be tried on spot again now
    /// (the swap-back interval passed since the last try).
    pub spot_trial_due: bool,
}

/// One action the plan asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub id: String,
    pub kind: ActionKind,
    pub drift: Drift,
    pub slot: Option<i64>,
    pub node_id: Option<String>,
    pub market: Option<Market>,
    pub risk: Risk,
    pub reason: String,
    /// A launch the deployment may not start now (back-off, failed rollout): kept in the plan so
    /// a pending action for the same drift is not cancelled, but not stored or run.
    pub blocked: bool,
}

/// The plan for one deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub actions: Vec<Planned>,
    pub status: DeploymentStatus,
    /// Why the deployment is in its status, when that needs saying.
    pub reason: Option<String>,
    pub ready: usize,
    pub launching: usize,
    pub draining: usize,
}

/// How a spot swap-back's reason starts.
pub const SWAP_BACK: &str = "spot swap-back";

/// Whether an action is a spot swap-back: a replacement of a replica that is fine, only not on
/// spot. Its failure does not count against the deployment (no back-off, no failed rollout).
pub fn is_swap_back(kind: ActionKind, drift: Drift) -> bool {
    kind == ActionKind::ReplaceReplica && drift == Drift::MissingReplica
}

/// `scale_up` when the deployment's latest scale decision added the slot a launch fills.
fn scaled_up(d: &Deployment, slot: i64) -> Option<Drift> {
    d.last_scale
        .as_ref()
        .filter(|s| s.added(slot))
        .map(|_| Drift::ScaleUp)
}

/// `scale_down` when its latest decision left the slot a replica is retired from outside the
/// count.
fn scaled_down(d: &Deployment, slot: i64) -> Option<Drift> {
    d.last_scale
        .as_ref()
        .filter(|s| s.removed(slot))
        .map(|_| Drift::ScaleDown)
}

fn scale_reason(d: &Deployment) -> String {
    d.last_scale
        .as_ref()
        .map(|s| format!("autoscale: {}", s.reason))
        .unwrap_or_default()
}

fn is_capacity(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::CapacityUnavailable
            | ErrorCode::SpotCapacityUnavailable
            | ErrorCode::QuotaExceeded
    )
}

pub fn plan(o: &Observation<'_>) -> Plan {
    let d = o.deployment;
    let rev = d.revision;
    let desired = d.desired();
    let launches_allowed = !d.deleting
        && d.status != DeploymentStatus::RolloutFailed
        && d.unsatisfiable_until.is_none_or(|until| until <= o.now);
    let mut out: Vec<Planned> = Vec::new();
    let node_action = |kind: ActionKind, drift: Drift, r: &ReplicaState, reason: String| {
        let risk = if d.spec.is_guarded(kind.as_str()) {
            Risk::Guarded
        } else {
            Risk::Low
        };
        Planned {
            id: action_id(&d.uid, rev, Some(r.slot), drift, kind, 0, Some(&r.node_id)),
            kind,
            drift,
            slot: Some(r.slot),
            node_id: Some(r.node_id.clone()),
            market: None,
            risk,
            reason,
            blocked: false,
        }
    };
    // Superseded or excess: drained if it serves, else terminated.
    let retire = |r: &ReplicaState, drift: Drift, why: &str| {
        if r.ready() {
            node_action(
                ActionKind::DrainReplica,
                drift,
                r,
                format!("{why}: draining it"),
            )
        } else {
            node_action(
                ActionKind::TerminateReplica,
                drift,
                r,
                format!("{why}: terminating it"),
            )
        }
    };

    let mut by_slot: BTreeMap<i64, Vec<&ReplicaState>> = BTreeMap::new();
    for r in o.replicas {
        by_slot.entry(r.slot).or_default().push(r);
    }
    for nodes in by_slot.values_mut() {
        // Newest first.
        nodes.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then(b.node_id.cmp(&a.node_id))
        });
    }

    // Draining replicas that finished their requests are terminated.
    for r in o
        .replicas
        .iter()
        .filter(|r| r.status == NodeStatus::Draining && r.drained)
    {
        let drift = if r.spot_notice {
            Drift::SpotInterruption
        } else if r.slot >= desired {
            scaled_down(d, r.slot).unwrap_or(Drift::ExcessReplica)
        } else if !r.current {
            Drift::OutdatedRevision
        } else {
            Drift::ExcessReplica
        };
        let why = if drift == Drift::ScaleDown {
            format!(
                "drained: no request in flight any more ({})",
                scale_reason(d)
            )
        } else {
            "drained: no request in flight any more".to_string()
        };
        out.push(node_action(ActionKind::TerminateReplica, drift, r, why));
    }
    // Excess slots.
    for r in o
        .replicas
        .iter()
        .filter(|r| r.slot >= desired && r.live() && !r.leaving())
    {
        let why = if d.deleting {
            "the deployment was deleted".to_string()
        } else {
            format!("slot {} is past the {} replicas wanted", r.slot, desired)
        };
        match scaled_down(d, r.slot).filter(|_| !d.deleting) {
            Some(drift) => {
                let why = format!("{why} ({})", scale_reason(d));
                out.push(retire(r, drift, &why));
            }
            None => out.push(retire(r, Drift::ExcessReplica, &why)),
        }
    }

    let active_total = |extra: i64| -> i64 {
        o.replicas
            .iter()
            .filter(|r| r.slot < desired && r.active())
            .count() as i64
            + extra
    };
    let ready_total = o
        .replicas
        .iter()
        .filter(|r| r.slot < desired && r.ready())
        .count() as i64;
    let surge = i64::from(d.spec.update.max_surge);
    let unavailable = i64::from(d.spec.update.max_unavailable);
    let mut launched = 0i64;
    // Ready replicas left once this plan's drains happen.
    let mut ready_after = ready_total;
    let mut hourly = o.hourly_usd;
    let mut ready_current = 0usize;
    // Each slot's ready replica, and whether anything else is in the slot.
    let mut kept: Vec<(i64, &ReplicaState, bool)> = Vec::new();
    let mut outdated_left = false;
    let mut dead_seen = false;

    for slot in 0..desired {
        let nodes = by_slot.get(&slot).map(Vec::as_slice).unwrap_or(&[]);
        let live: Vec<&ReplicaState> = nodes.iter().copied().filter(|r| r.live()).collect();
        let current: Vec<&ReplicaState> = live
            .iter()
            .copied()
            .filter(|r| r.active() && r.current)
            .collect();
        let old: Vec<&ReplicaState> = live
            .iter()
            .copied()
            .filter(|r| r.active() && !r.current)
            .collect();
        let dead: Vec<&ReplicaState> = live
            .iter()
            .copied()
            .filter(|r| r.dead && !r.leaving())
            .collect();
        dead_seen |= !dead.is_empty();
        if let Some(keep) = current.iter().find(|r| r.ready()).or(current.first()) {
            if keep.ready() {
                ready_current += 1;
                kept.push((slot, *keep, current.len() + old.len() > 1));
                // A newer replica still launching is the slot's next one (a spot swap-back):
                // it takes over once ready. Any other is superseded.
                for r in current
                    .iter()
                    .filter(|r| r.node_id != keep.node_id)
                    .filter(|r| r.ready() || r.created_at <= keep.created_at)
                {
                    ready_after -= i64::from(r.ready());
                    out.push(retire(
                        r,
                        Drift::ExcessReplica,
                        "another replica holds its slot",
                    ));
                }
                for r in &old {
                    ready_after -= i64::from(r.ready());
                    out.push(retire(
                        r,
                        Drift::OutdatedRevision,
                        "its replacement is ready",
                    ));
                }
            } else {
                outdated_left |= !old.is_empty();
            }
            for r in &dead {
                out.push(node_action(
                    ActionKind::TerminateReplica,
                    Drift::UnhealthyReplica,
                    r,
                    format!("{}: its replacement is on its way", dead_reason(r)),
                ));
            }
            continue;
        }
        // The slot is empty: why?
        let newest_leaving = live.iter().find(|r| r.leaving());
        let (kind, drift, about, reason) = if let Some(r) = dead.first() {
            (
                ActionKind::ReplaceReplica,
                Drift::UnhealthyReplica,
                Some(*r),
                format!("{}: launching a replacement", dead_reason(r)),
            )
        } else if let Some(r) = old.first() {
            outdated_left = true;
            // A rolling update: within max_surge, or first drain within max_unavailable.
            if active_total(launched) >= desired + surge {
                if r.ready() && ready_after > desired - unavailable {
                    ready_after -= 1;
                    out.push(node_action(
                        ActionKind::DrainReplica,
                        Drift::OutdatedRevision,
                        r,
                        format!("rolling update to revision {rev}: draining it first (max_unavailable {unavailable})"),
                    ));
                }
                continue;
            }
            (
                ActionKind::ReplaceReplica,
                Drift::OutdatedRevision,
                Some(*r),
                format!(
                    "runs revision {}, not {rev}: launching its replacement",
                    r.revision
                ),
            )
        } else if let Some(r) = newest_leaving.filter(|r| r.spot_notice) {
            (
                ActionKind::ReplaceReplica,
                Drift::SpotInterruption,
                Some(*r),
                "spot interruption notice: launching its replacement while it drains".to_string(),
            )
        } else if let Some(r) = newest_leaving.filter(|r| !r.current) {
            outdated_left = true;
            (
                ActionKind::ReplaceReplica,
                Drift::OutdatedRevision,
                Some(*r),
                format!(
                    "runs revision {}, not {rev}: launching its replacement",
                    r.revision
                ),
            )
        } else if let Some(drift) = scaled_up(d, slot) {
            (
                ActionKind::LaunchReplica,
                drift,
                None,
                format!("slot {slot} has no replica ({})", scale_reason(d)),
            )
        } else {
            (
                ActionKind::LaunchReplica,
                Drift::MissingReplica,
                None,
                format!("slot {slot} has no replica"),
            )
        };
        let market = d.spec.slot_market(slot);
        // Successive replicas of a slot get new ids.
        let incarnation = nodes.iter().filter(|r| r.revision == rev).count() as i64;
        let mut guarded = d.spec.is_guarded(kind.as_str());
        let cost = d.spec.replica_hourly_usd(market);
        let over_cap = d
            .spec
            .approval
            .max_hourly_usd
            .is_some_and(|cap| hourly + cost > cap + 1e-9);
        guarded |= over_cap;
        let reason = if over_cap {
            format!(
                "{reason} (would take the estimated cost to ${:.2}/h, above the ${:.2}/h cap)",
                hourly + cost,
                d.spec.approval.max_hourly_usd.unwrap_or_default()
            )
        } else {
            reason
        };
        out.push(Planned {
            id: action_id(&d.uid, rev, Some(slot), drift, kind, incarnation, None),
            kind,
            drift,
            slot: Some(slot),
            node_id: about.map(|r| r.node_id.clone()),
            market: Some(market),
            risk: if guarded { Risk::Guarded } else { Risk::Low },
            reason,
            blocked: !launches_allowed && !guarded,
        });
        launched += 1;
        hourly += cost;
        // A spot slot that found no spot capacity: the on-demand fallback, when it waits for
        // approval, is planned beside the spot retries until a replica of the slot is ready.
        let spot_failed = nodes.iter().any(|r| {
            r.revision == rev
                && r.market == Market::Spot
                && r.launch_failed.is_some_and(is_capacity)
        });
        if market == Market::Spot
            && d.spec.falls_back_to_on_demand()
            && d.spec.fallback_guarded()
            && spot_failed
        {
            let settled = nodes
                .iter()
                .filter(|r| {
                    r.revision == rev && (r.market == Market::OnDemand || r.launch_succeeded)
                })
                .count() as i64;
            out.push(Planned {
                id: action_id(
                    &d.uid,
                    rev,
                    Some(slot),
                    drift,
                    ActionKind::LaunchReplica,
                    settled,
                    Some("on_demand_fallback"),
                ),
                kind: ActionKind::LaunchReplica,
                drift,
                slot: Some(slot),
                node_id: None,
                market: Some(Market::OnDemand),
                risk: Risk::Guarded,
                reason: format!(
                    "slot {slot}: no spot capacity; an on-demand replica (about ${:.2}/h) waits for approval",
                    d.spec.replica_hourly_usd(Market::OnDemand)
                ),
                blocked: false,
            });
        }
    }

    // Spot swap-back: when every slot is served and nothing else is under way, one on-demand
    // replica standing in a spot slot (a fallback) is tried on spot again; it is retired only
    // once the spot replica is ready, so ready replicas never drop.
    let settled = ready_current as i64 == desired
        && !outdated_left
        && !dead_seen
        && kept.iter().all(|(_, _, crowded)| !crowded)
        && o.replicas
            .iter()
            .all(|r| !r.live() || r.slot >= desired || r.ready() || r.leaving());
    if settled && o.spot_trial_due && launches_allowed {
        let stand_in = kept.iter().find(|(slot, r, _)| {
            d.spec.slot_market(*slot) == Market::Spot && r.market == Market::OnDemand
        });
        if let Some((slot, r, _)) = stand_in {
            let incarnation = by_slot
                .get(slot)
                .map_or(0, |n| n.iter().filter(|r| r.revision == rev).count())
                as i64;
            let kind = ActionKind::ReplaceReplica;
            out.push(Planned {
                id: action_id(&d.uid, rev, Some(*slot), Drift::MissingReplica, kind, incarnation, Some(&r.node_id)),
                kind,
                drift: Drift::MissingReplica,
                slot: Some(*slot),
                node_id: Some(r.node_id.clone()),
                market: Some(Market::Spot),
                risk: if d.spec.is_guarded(kind.as_str()) { Risk::Guarded } else { Risk::Low },
                reason: format!("{SWAP_BACK}: slot {slot} runs on an on-demand fallback; trying spot again (the on-demand replica stays until the spot one is ready)"),
                blocked: false,
            });
        }
    }

    let count = |f: &dyn Fn(&ReplicaState) -> bool| o.replicas.iter().filter(|r| f(r)).count();
    let ready = count(&|r| r.ready());
    let launching =
        count(&|r| matches!(r.status, NodeStatus::Launching | NodeStatus::Registered) && !r.dead);
    let draining =
        count(&|r| matches!(r.status, NodeStatus::Draining | NodeStatus::TeardownPending));
    let excess_live = o
        .replicas
        .iter()
        .any(|r| r.live() && (r.slot >= desired || (!r.leaving() && !r.current)));
    let (status, reason) = if d.deleting {
        (DeploymentStatus::Deleting, d.reason.clone())
    } else if d.status == DeploymentStatus::RolloutFailed {
        (DeploymentStatus::RolloutFailed, d.reason.clone())
    } else if d.unsatisfiable_until.is_some_and(|until| until > o.now) {
        (DeploymentStatus::Unsatisfiable, d.reason.clone())
    } else if ready_current as i64 == desired && !excess_live && !outdated_left {
        (DeploymentStatus::Serving, None)
    } else if dead_seen
        || (ready_total < desired && o.replicas.iter().any(|r| r.spot_notice && r.live()))
    {
        (
            DeploymentStatus::Degraded,
            Some(format!(
                "{ready_total} of {desired} replicas ready; replacing what failed"
            )),
        )
    } else {
        (DeploymentStatus::Converging, None)
    };
    Plan {
        actions: out,
        status,
        reason,
        ready,
        launching,
        draining,
    }
}

fn dead_reason(r: &ReplicaState) -> String {
    match r.status {
        NodeStatus::Offline => format!("replica {} is offline", r.node_id),
        _ => format!(
            "replica {} stayed unhealthy past the grace period",
            r.node_id
        ),
    }
}

#[cfg(test)]
mod tests;
