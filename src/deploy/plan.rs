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
            Drift::ExcessReplica
        } else if !r.current {
            Drift::OutdatedRevision
        } else {
            Drift::ExcessReplica
        };
        out.push(node_action(
            ActionKind::TerminateReplica,
            drift,
            r,
            "drained: no request in flight any more".to_string(),
        ));
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
        out.push(retire(r, Drift::ExcessReplica, &why));
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
mod tests {
    use super::*;
    use crate::deploy::spec::DeploymentRequest;

    fn deployment(replicas: u32) -> Deployment {
        let spec: DeploymentRequest = serde_json::from_value(serde_json::json!({
            "name": "chat", "model": "m/m", "provider": "local", "replicas": replicas
        }))
        .unwrap();
        Deployment {
            name: "chat".into(),
            uid: "uid".into(),
            revision: 1,
            spec,
            status: DeploymentStatus::Converging,
            reason: None,
            unsatisfiable_until: None,
            failures: 0,
            last_failure_at: None,
            deleting: false,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn replica(id: &str, slot: i64, status: NodeStatus) -> ReplicaState {
        ReplicaState {
            node_id: id.into(),
            status,
            revision: 1,
            slot,
            created_at: 1,
            market: Market::OnDemand,
            current: true,
            dead: false,
            spot_notice: false,
            drained: false,
            launch_succeeded: status == NodeStatus::Ready,
            launch_failed: None,
        }
    }

    fn run(d: &Deployment, replicas: &[ReplicaState]) -> Plan {
        plan(&Observation {
            deployment: d,
            replicas,
            hourly_usd: 0.0,
            now: 10,
            spot_trial_due: false,
        })
    }

    fn kinds(p: &Plan) -> Vec<(ActionKind, Drift, Option<String>)> {
        p.actions
            .iter()
            .map(|a| (a.kind, a.drift, a.node_id.clone()))
            .collect()
    }

    #[test]
    fn a_new_deployment_launches_every_slot_and_the_plan_is_stable() {
        let d = deployment(2);
        let p = run(&d, &[]);
        assert_eq!(p.actions.len(), 2);
        assert!(p.actions.iter().all(|a| a.kind == ActionKind::LaunchReplica
            && a.drift == Drift::MissingReplica
            && a.risk == Risk::Low
            && !a.blocked));
        assert_eq!(p, run(&d, &[]), "the same drift gives the same actions");
        assert_ne!(p.actions[0].id, p.actions[1].id);
        assert_eq!(p.status, DeploymentStatus::Converging);
    }

    #[test]
    fn a_converged_deployment_plans_nothing_and_is_serving() {
        let d = deployment(2);
        let p = run(
            &d,
            &[
                replica("a", 0, NodeStatus::Ready),
                replica("b", 1, NodeStatus::Ready),
            ],
        );
        assert!(p.actions.is_empty());
        assert_eq!(p.status, DeploymentStatus::Serving);
        assert_eq!(p.ready, 2);
    }

    #[test]
    fn a_dead_replica_is_replaced_then_terminated() {
        let d = deployment(2);
        let mut dead = replica("b", 1, NodeStatus::Offline);
        dead.dead = true;
        let p = run(&d, &[replica("a", 0, NodeStatus::Ready), dead.clone()]);
        assert_eq!(
            kinds(&p),
            vec![(
                ActionKind::ReplaceReplica,
                Drift::UnhealthyReplica,
                Some("b".into())
            )]
        );
        assert_eq!(p.status, DeploymentStatus::Degraded);
        // Its replacement launching: the dead one is terminated.
        let mut new = replica("c", 1, NodeStatus::Launching);
        new.created_at = 5;
        let p2 = run(&d, &[replica("a", 0, NodeStatus::Ready), dead.clone(), new]);
        assert_eq!(
            kinds(&p2),
            vec![(
                ActionKind::TerminateReplica,
                Drift::UnhealthyReplica,
                Some("b".into())
            )]
        );
        // The replacement failed: the next one has another id.
        let mut failed = replica("c", 1, NodeStatus::Terminated);
        failed.launch_failed = Some(ErrorCode::SetupFailed);
        let p3 = run(&d, &[replica("a", 0, NodeStatus::Ready), dead, failed]);
        assert_eq!(p3.actions[0].kind, ActionKind::ReplaceReplica);
        assert_ne!(p3.actions[0].id, p.actions[0].id);
    }

    #[test]
    fn scaling_down_drains_ready_excess_and_terminates_the_rest() {
        let d = deployment(1);
        let mut drained = replica("c", 2, NodeStatus::Draining);
        drained.drained = true;
        let p = run(
            &d,
            &[
                replica("a", 0, NodeStatus::Ready),
                replica("b", 1, NodeStatus::Ready),
                drained,
                replica("e", 3, NodeStatus::Launching),
            ],
        );
        let mut got = kinds(&p);
        got.sort_by_key(|k| k.2.clone());
        assert_eq!(
            got,
            vec![
                (
                    ActionKind::DrainReplica,
                    Drift::ExcessReplica,
                    Some("b".into())
                ),
                (
                    ActionKind::TerminateReplica,
                    Drift::ExcessReplica,
                    Some("c".into())
                ),
                (
                    ActionKind::TerminateReplica,
                    Drift::ExcessReplica,
                    Some("e".into())
                ),
            ]
        );
    }

    #[test]
    fn a_rolling_update_surges_one_at_a_time_and_drains_old_when_new_is_ready() {
        let mut d = deployment(2);
        d.revision = 2;
        let old = |id: &str, slot| ReplicaState {
            current: false,
            ..replica(id, slot, NodeStatus::Ready)
        };
        let p = run(&d, &[old("a", 0), old("b", 1)]);
        assert_eq!(
            kinds(&p),
            vec![(
                ActionKind::ReplaceReplica,
                Drift::OutdatedRevision,
                Some("a".into())
            )]
        );
        // The new one launching: nothing more (max_surge 1).
        let mut new = replica("c", 0, NodeStatus::Registered);
        new.revision = 2;
        new.created_at = 5;
        let p = run(&d, &[old("a", 0), old("b", 1), new.clone()]);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        // Ready: the old one of its slot drains.
        new.status = NodeStatus::Ready;
        let p = run(&d, &[old("a", 0), old("b", 1), new.clone()]);
        assert_eq!(
            kinds(&p),
            vec![(
                ActionKind::DrainReplica,
                Drift::OutdatedRevision,
                Some("a".into())
            )]
        );
        // Drained: the next slot is replaced (the budget is back).
        let mut a = old("a", 0);
        a.status = NodeStatus::Draining;
        let p = run(&d, &[a, old("b", 1), new]);
        assert_eq!(
            kinds(&p),
            vec![(
                ActionKind::ReplaceReplica,
                Drift::OutdatedRevision,
                Some("b".into())
            )]
        );
        assert_eq!(p.status, DeploymentStatus::Converging);
    }

    #[test]
    fn max_unavailable_without_surge_drains_first() {
        let mut d = deployment(2);
        d.revision = 2;
        d.spec.update.max_surge = 0;
        d.spec.update.max_unavailable = 1;
        let old = |id: &str, slot| ReplicaState {
            current: false,
            ..replica(id, slot, NodeStatus::Ready)
        };
        let p = run(&d, &[old("a", 0), old("b", 1)]);
        assert_eq!(
            kinds(&p),
            vec![(
                ActionKind::DrainReplica,
                Drift::OutdatedRevision,
                Some("a".into())
            )]
        );
    }

    #[test]
    fn a_spot_notice_gets_its_replacement_while_the_node_drains() {
        let mut d = deployment(1);
        d.spec.spot.use_spot = true;
        let mut doomed = replica("a", 0, NodeStatus::Draining);
        doomed.spot_notice = true;
        doomed.market = Market::Spot;
        let p = run(&d, &[doomed.clone()]);
        assert_eq!(
            kinds(&p),
            vec![(
                ActionKind::ReplaceReplica,
                Drift::SpotInterruption,
                Some("a".into())
            )]
        );
        assert_eq!(p.actions[0].market, Some(Market::Spot));
        doomed.drained = true;
        let mut new = replica("b", 0, NodeStatus::Ready);
        new.created_at = 5;
        let p = run(&d, &[doomed, new]);
        assert_eq!(
            kinds(&p),
            vec![(
                ActionKind::TerminateReplica,
                Drift::SpotInterruption,
                Some("a".into())
            )]
        );
    }

    #[test]
    fn back_off_blocks_launches_but_keeps_them_planned() {
        let mut d = deployment(1);
        d.unsatisfiable_until = Some(100);
        d.reason = Some("no capacity".into());
        let p = run(&d, &[]);
        assert!(p.actions[0].blocked);
        assert_eq!(p.status, DeploymentStatus::Unsatisfiable);
        d.unsatisfiable_until = Some(5);
        assert!(!run(&d, &[]).actions[0].blocked, "the back-off ended");
    }

    #[test]
    fn a_guarded_on_demand_fallback_is_planned_beside_spot_retries_with_a_stable_id() {
        let mut d = deployment(1);
        d.spec.spot.use_spot = true;
        d.spec.spot.fallback = Some("on_demand".into());
        d.spec.approval.guarded = vec!["on_demand_fallback".into()];
        let mut failed = replica("a", 0, NodeStatus::Terminated);
        failed.market = Market::Spot;
        failed.launch_failed = Some(ErrorCode::SpotCapacityUnavailable);
        let p = run(&d, &[failed.clone()]);
        let fallback: Vec<_> = p
            .actions
            .iter()
            .filter(|a| a.risk == Risk::Guarded)
            .collect();
        assert_eq!(fallback.len(), 1);
        assert_eq!(fallback[0].market, Some(Market::OnDemand));
        // A spot retry fails too: the same fallback.
        let mut again = failed.clone();
        again.node_id = "b".into();
        let p2 = run(&d, &[failed.clone(), again]);
        let fallback2: Vec<_> = p2
            .actions
            .iter()
            .filter(|a| a.risk == Risk::Guarded)
            .collect();
        assert_eq!(fallback2[0].id, fallback[0].id);
        // A spot retry got ready: no fallback any more.
        let mut ok = replica("c", 0, NodeStatus::Ready);
        ok.market = Market::Spot;
        let p3 = run(&d, &[failed, ok]);
        assert!(p3.actions.is_empty());
    }

    #[test]
    fn an_on_demand_fallback_is_tried_on_spot_again_once_settled_and_due() {
        let mut d = deployment(2);
        d.spec.spot.use_spot = true;
        d.spec.spot.fallback = Some("on_demand".into());
        let mut od = replica("a", 0, NodeStatus::Ready);
        od.market = Market::OnDemand;
        let mut spot = replica("b", 1, NodeStatus::Ready);
        spot.market = Market::Spot;
        let due = |replicas: &[ReplicaState]| {
            plan(&Observation {
                deployment: &d,
                replicas,
                hourly_usd: 0.0,
                now: 10,
                spot_trial_due: true,
            })
        };
        let p = due(&[od.clone(), spot.clone()]);
        assert_eq!(
            kinds(&p),
            vec![(
                ActionKind::ReplaceReplica,
                Drift::MissingReplica,
                Some("a".into())
            )]
        );
        assert_eq!(p.actions[0].market, Some(Market::Spot));
        assert!(is_swap_back(p.actions[0].kind, p.actions[0].drift));
        assert!(
            run(&d, &[od.clone(), spot.clone()]).actions.is_empty(),
            "not due"
        );
        // The spot try is launching: nothing more. Ready: the on-demand one drains.
        let mut trial = replica("c", 0, NodeStatus::Launching);
        trial.market = Market::Spot;
        trial.created_at = 5;
        assert!(due(&[od.clone(), spot.clone(), trial.clone()])
            .actions
            .is_empty());
        trial.status = NodeStatus::Ready;
        let p = due(&[od, spot, trial]);
        assert_eq!(
            kinds(&p),
            vec![(
                ActionKind::DrainReplica,
                Drift::ExcessReplica,
                Some("a".into())
            )]
        );
    }

    #[test]
    fn a_cost_cap_guards_the_launch_that_would_pass_it() {
        let mut d = deployment(2);
        d.spec.provider = "skypilot".into();
        d.spec.gpu = Some("L4".into());
        d.spec.approval.max_hourly_usd = Some(1.0);
        let p = run(&d, &[]);
        assert_eq!(p.actions[0].risk, Risk::Low);
        assert_eq!(p.actions[1].risk, Risk::Guarded, "{}", p.actions[1].reason);
    }

    #[test]
    fn a_deleted_deployment_retires_everything() {
        let mut d = deployment(2);
        d.deleting = true;
        let p = run(
            &d,
            &[
                replica("a", 0, NodeStatus::Ready),
                replica("b", 1, NodeStatus::Launching),
            ],
        );
        assert_eq!(
            kinds(&p),
            vec![
                (
                    ActionKind::DrainReplica,
                    Drift::ExcessReplica,
                    Some("a".into())
                ),
                (
                    ActionKind::TerminateReplica,
                    Drift::ExcessReplica,
                    Some("b".into())
                ),
            ]
        );
        assert_eq!(p.status, DeploymentStatus::Deleting);
    }
}
