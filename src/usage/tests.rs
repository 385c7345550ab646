use super::*;

const H: i64 = 3_600_000;
const T0: i64 = 1_800_000_000_000 / H * H;

fn used(key: &str, model: &str, deployment: &str, req: u64, p: u64, c: u64) -> Used {
    Used {
        key_id: key.into(),
        model: model.into(),
        deployment: deployment.into(),
        counts: Counts {
            requests: req,
            prompt_tokens: p,
            completion_tokens: c,
        },
    }
}

fn node(
    model: &str,
    deployment: &str,
    start: i64,
    end: Option<i64>,
    usd: f64,
    gpus: f64,
) -> NodeCost {
    NodeCost {
        model: model.into(),
        deployment: deployment.into(),
        start,
        end,
        usd_per_hour: usd,
        gpus,
    }
}

#[test]
fn dollars_come_from_each_replicas_hours_in_the_period_at_its_price() {
    let period = Period::new(T0, T0 + 2 * H).unwrap();
    let nodes = [
        // Ran the whole period at $2/h on 2 GPUs: $4, 4 GPU-hours, and still runs.
        node("m", "d", T0 - H, None, 2.0, 2.0),
        // Half an hour in the period at $1/h, then terminated.
        node("m", "d", T0 + H, Some(T0 + H + H / 2), 1.0, 1.0),
        // Before the period: nothing.
        node("m", "d", T0 - 3 * H, Some(T0 - H), 5.0, 1.0),
    ];
    let used = [used("", "m", "d", 10, 600_000, 400_000)];
    let r = report(
        period,
        GroupBy::Model,
        &used,
        &[],
        &nodes,
        &HashMap::new(),
        T0 + 2 * H,
    );
    assert_eq!(r.usage.len(), 1);
    let m = &r.usage[0];
    assert_eq!((m.group.as_str(), m.requests), ("m", 10));
    assert_eq!(m.usd, 4.5);
    assert_eq!(m.gpu_hours, 4.5);
    // 1 M tokens for $4.50.
    assert_eq!(m.usd_per_million_tokens, Some(4.5));
    assert_eq!(m.hourly_usd, Some(2.0));
    assert_eq!(r.total.usd, 4.5);
    // The series: 2 h in 60 points at most, so 5-minute buckets; dollars add up.
    assert_eq!(r.series.bucket_s, 300);
    assert_eq!(r.series.points.len(), 24);
    let sum: f64 = r.series.points.iter().map(|p| p.usd).sum();
    assert!((sum - 4.5).abs() < 1e-4, "{sum}");
}

#[test]
fn grouped_by_key_each_models_cost_is_shared_by_token_use() {
    let period = Period::new(T0, T0 + H).unwrap();
    let nodes = [
        node("a", "da", T0, None, 3.0, 1.0),
        node("b", "db", T0, None, 1.0, 1.0),
    ];
    let used = [
        used("k1", "a", "da", 1, 100, 100),
        used("k2", "a", "da", 1, 300, 300),
        used("", "a", "da", 1, 0, 0),
    ];
    let names = HashMap::from([("k1".to_string(), "team-1".to_string())]);
    let r = report(period, GroupBy::Key, &used, &[], &nodes, &names, T0 + H);
    let by = |g: &str| r.usage.iter().find(|u| u.group == g).unwrap();
    assert_eq!(by("team-1").usd, 0.75);
    assert_eq!(by("team-1").key_id.as_deref(), Some("k1"));
    // An unknown key id is shown by its id.
    assert_eq!(by("k2").usd, 2.25);
    assert_eq!(by(ENV_OR_OPEN).usd, 0.0);
    assert_eq!(by(ENV_OR_OPEN).requests, 1);
    // Model b had no requests: its cost is idle.
    assert_eq!(by(IDLE).usd, 1.0);
    assert_eq!(by(IDLE).hourly_usd, None);
    let total: f64 = r.usage.iter().map(|u| u.usd).sum();
    assert!((total - r.total.usd).abs() < 1e-9);
}

#[test]
fn by_deployment_and_with_no_tokens() {
    let period = Period::new(T0, T0 + H).unwrap();
    let r = report(
        period,
        GroupBy::Deployment,
        &[used("", "m", "", 2, 0, 0)],
        &[(
            T0 + 120_000,
            Counts {
                requests: 2,
                prompt_tokens: 0,
                completion_tokens: 0,
            },
        )],
        &[],
        &HashMap::new(),
        T0 + H,
    );
    assert_eq!(r.usage[0].group, NONE);
    assert_eq!(r.usage[0].usd_per_million_tokens, None);
    assert_eq!(r.series.bucket_s, 60);
    assert_eq!(r.series.points[2].requests, 2);
}

#[test]
fn periods_are_whole_minutes_and_bounded() {
    let p = Period::new(T0 + 30_000, T0 + 90_000).unwrap();
    assert_eq!((p.from, p.to), (T0, T0 + 120_000));
    assert!(Period::new(T0, T0).is_err());
    assert!(Period::new(T0, T0 + MAX_PERIOD_MS + 1).is_err());
    assert_eq!(
        Period::new(T0, T0 + 30 * 24 * H).unwrap().bucket_ms(),
        86_400_000
    );
}

#[test]
fn a_nodes_price_is_its_placements_else_the_catalogues() {
    use crate::launch::stage::{Attempt, Market};
    let attempt = |outcome, price| Attempt {
        cloud: "aws".into(),
        region: None,
        zone: None,
        instance_type: None,
        market: Market::Spot,
        price_per_hour: price,
        outcome,
        reason: None,
    };
    assert_eq!(
        placement_price(&[
            attempt(AttemptOutcome::Failed, Some(9.0)),
            attempt(AttemptOutcome::Succeeded, Some(0.35)),
        ]),
        Some(0.35)
    );
    assert_eq!(
        placement_price(&[attempt(AttemptOutcome::Failed, Some(9.0))]),
        None
    );
}

#[test]
fn a_period_without_nodes_has_no_negative_zero() {
    let period = Period::new(T0, T0 + H).unwrap();
    let r = report(
        period,
        GroupBy::Model,
        &[],
        &[],
        &[],
        &HashMap::new(),
        T0 + H,
    );
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("-0.0"), "{json}");
}
