//! The planner's rules, one scenario each.

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
        last_scale: None,
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

#[test]
fn the_autoscalers_decisions_name_the_launches_and_drains_they_cause() {
    use crate::deploy::model::ScaleDecision;
    let decided = |from: u32, to: u32| {
        let mut d = deployment(to);
        d.last_scale = Some(ScaleDecision {
            from,
            to,
            reason: format!("in_flight 9.00 per ready replica above the target 3.00 for 30 s: {from} → {to} replicas"),
            at: 5,
        });
        d
    };
    // Up from 1 to 3: the two new slots' launches are scale_up, with the decision's reason.
    let up = run(&decided(1, 3), &[replica("a", 0, NodeStatus::Ready)]);
    assert_eq!(
        kinds(&up),
        vec![
            (ActionKind::LaunchReplica, Drift::ScaleUp, None),
            (ActionKind::LaunchReplica, Drift::ScaleUp, None)
        ]
    );
    assert!(
        up.actions[0].reason.contains("autoscale: in_flight 9.00"),
        "{:?}",
        up.actions[0]
    );
    // A slot inside the old count that lost its replica is an ordinary missing replica.
    let missing = run(&decided(2, 3), &[replica("a", 0, NodeStatus::Ready)]);
    assert_eq!(missing.actions[0].drift, Drift::MissingReplica);
    assert_eq!(missing.actions[1].drift, Drift::ScaleUp);
    // Down from 3 to 1: the two top slots are drained as scale_down, then terminated so.
    let all = [
        replica("a", 0, NodeStatus::Ready),
        replica("b", 1, NodeStatus::Ready),
        replica("c", 2, NodeStatus::Ready),
    ];
    let down = run(&decided(3, 1), &all);
    assert_eq!(
        kinds(&down),
        vec![
            (ActionKind::DrainReplica, Drift::ScaleDown, Some("b".into())),
            (ActionKind::DrainReplica, Drift::ScaleDown, Some("c".into()))
        ]
    );
    let mut drained = replica("c", 2, NodeStatus::Draining);
    drained.drained = true;
    let done = run(&decided(3, 1), &[all[0].clone(), all[1].clone(), drained]);
    assert!(done
        .actions
        .iter()
        .any(|a| a.kind == ActionKind::TerminateReplica && a.drift == Drift::ScaleDown));
    // Without a decision the same shapes are missing and excess replicas.
    assert_eq!(
        run(&deployment(1), &all).actions[0].drift,
        Drift::ExcessReplica
    );
}

#[test]
fn a_scale_up_keeps_to_the_spot_policy_and_the_cost_cap() {
    use crate::deploy::model::ScaleDecision;
    let mut d = deployment(3);
    d.spec.provider = "skypilot".into();
    d.spec.gpu = Some("L4".into());
    d.spec.spot.use_spot = true;
    d.spec.spot.base_on_demand = 1;
    d.last_scale = Some(ScaleDecision {
        from: 1,
        to: 3,
        reason: "in_flight 9.00 per ready replica above the target 3.00 for 30 s: 1 → 3 replicas"
            .into(),
        at: 5,
    });
    let mut first = replica("a", 0, NodeStatus::Ready);
    first.market = Market::OnDemand;
    let p = run(&d, &[first.clone()]);
    assert_eq!(p.actions.len(), 2);
    for a in &p.actions {
        assert_eq!(a.drift, Drift::ScaleUp);
        assert_eq!(a.market, Some(Market::Spot), "past base_on_demand: {a:?}");
        assert_eq!(a.risk, Risk::Low);
    }
    // A cap the second added replica would pass: that launch waits for approval.
    let one_spot = d.spec.replica_hourly_usd(Market::Spot);
    let on_demand = d.spec.replica_hourly_usd(Market::OnDemand);
    d.spec.approval.max_hourly_usd = Some(on_demand + one_spot * 1.5);
    let capped = plan(&Observation {
        deployment: &d,
        replicas: &[first],
        hourly_usd: on_demand,
        now: 10,
        spot_trial_due: false,
    });
    assert_eq!(
        capped.actions.iter().map(|a| a.risk).collect::<Vec<_>>(),
        vec![Risk::Low, Risk::Guarded],
        "{:?}",
        capped.actions
    );
}
