//! The autoscaler's decision, as a pure function: given a deployment's policy, its replica
//! count, how many replicas are ready, and the metric's current value, whether to change the
//! count now. No I/O here, so every rule is unit-tested.
//!
//! - **Band.** Nothing happens while the value is within 10 % of the target (hysteresis).
//! - **Delays.** Above the band for `scale_up_delay_s` in a row: replicas are added. Below it for
//!   `scale_down_delay_s` in a row: one is removed. Leaving the band, or a decision, restarts the
//!   clock, so an oscillating load never flaps.
//! - **How many.** `in_flight` and `rps` scale proportionally: enough ready replicas to bring the
//!   value to the target, at once when going up, one at a time when going down (and never below
//!   what the load needs). `queue` adds what would run everything running and waiting now
//!   ((running + waiting) / running); `ttft` is not proportional to the count: one replica at a
//!   time. Going down, `queue` and `ttft` remove one at a time.
//! - **Launches under way count.** Going up, replicas still launching are part of the count: a
//!   value that stays high while they start does not add more unless it needs more than them.
//! - **Stale or missing signals** (no ready replica, a ready replica whose agent stopped
//!   reporting, no value) never remove a replica, nor does a replica with a nearly full KV
//!   cache.
//! - Always within `min_replicas..=max_replicas`.

use super::spec::{AutoscalePolicy, ScaleMetric};

/// How far from the target the value may move before anything happens.
pub const TOLERANCE: f64 = 0.10;

/// The metric as the reconciler measured it for one deployment, averaged over the policy's
/// window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Signal {
    /// Per ready replica (`in_flight`, `queue`, `rps`) or as is (`ttft`, seconds); `None` when
    /// there is nothing to measure (yet).
    pub value: Option<f64>,
    /// Some replica's report is older than it should be: the value may be wrong low.
    pub stale: bool,
    /// Some ready replica reports its KV cache nearly full: it is not idle, whatever the
    /// metric says.
    pub kv_cache_full: bool,
    /// For `queue`: how much the serving capacity must grow to run what runs and waits now,
    /// (running + waiting) / running; `None` when unknown.
    pub growth: Option<f64>,
}

/// What the autoscaler remembers of one deployment between passes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleClock {
    /// Since when (Unix ms) the value has been above the band, or below it.
    pub above_since: Option<i64>,
    pub below_since: Option<i64>,
}

/// A change of the replica count, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub to: u32,
    pub reason: String,
}

/// Scaling to and from zero (only with `min_replicas: 0`): at zero, a request waiting for a
/// replica launches one at once; with no request for `scale_to_zero_after_s`, the deployment
/// goes to zero. `None` leaves it to [`decide`].
pub fn decide_zero(
    policy: &AutoscalePolicy,
    current: u32,
    held: usize,
    idle_ms: i64,
) -> Option<Decision> {
    if policy.min_replicas > 0 {
        return None;
    }
    if current == 0 {
        return (held > 0).then(|| Decision {
            to: 1,
            reason: format!("{held} requests wait at zero replicas: 0 → 1 replicas (cold start)"),
        });
    }
    let after = policy.scale_to_zero_after();
    (idle_ms >= after.as_millis() as i64).then(|| Decision {
        to: 0,
        reason: format!(
            "no request for {} s: {current} → 0 replicas (scale to zero)",
            idle_ms / 1000
        ),
    })
}

/// Decides for one deployment with `current` desired and `ready` ready replicas.
pub fn decide(
    policy: &AutoscalePolicy,
    current: u32,
    ready: usize,
    signal: Signal,
    clock: &mut ScaleClock,
    now: i64,
) -> Option<Decision> {
    let (min, max) = (policy.min_replicas, policy.max_replicas);
    if current < min || current > max {
        *clock = ScaleClock::default();
        let to = current.clamp(min, max);
        return Some(Decision {
            to,
            reason: format!("{current} replicas is outside autoscale's {min} to {max}"),
        });
    }
    let metric = policy.metric.as_str();
    let target = policy.target;
    let Some(value) = signal.value.filter(|_| ready > 0) else {
        *clock = ScaleClock::default();
        return None;
    };
    let ratio = value / target;
    let shown = |v: f64| match policy.metric {
        ScaleMetric::Ttft => format!("{v:.2} s"),
        _ => format!("{v:.2}"),
    };
    let per = match policy.metric {
        ScaleMetric::Ttft => "",
        _ => " per ready replica",
    };
    if ratio > 1.0 + TOLERANCE {
        clock.below_since = None;
        let since = *clock.above_since.get_or_insert(now);
        let waited = (now - since) / 1000;
        if waited < policy.scale_up_delay_s as i64 || current >= max {
            return None;
        }
        // Ready replicas plus at least one; what is launching already counts toward it.
        let at_least = ready as u32 + 1;
        let to = match policy.metric {
            ScaleMetric::Ttft => at_least,
            ScaleMetric::Queue => signal
                .growth
                .map_or(at_least, |g| needed(ready, g).max(at_least)),
            _ => needed(ready, ratio).max(at_least),
        }
        .min(max);
        if to <= current {
            return None;
        }
        *clock = ScaleClock::default();
        return Some(Decision {
            to,
            reason: format!(
                "{metric} {}{per} above the target {} for {waited} s: {current} → {to} replicas",
                shown(value),
                shown(target)
            ),
        });
    }
    if ratio < 1.0 - TOLERANCE {
        clock.above_since = None;
        if signal.stale || signal.kv_cache_full {
            clock.below_since = None;
            return None;
        }
        let since = *clock.below_since.get_or_insert(now);
        let waited = (now - since) / 1000;
        // Zero only through `decide_zero` (idle for a while), never on a low value.
        let floor = min.max(1);
        if waited < policy.scale_down_delay_s as i64 || current <= floor {
            return None;
        }
        let to = match policy.metric {
            ScaleMetric::Ttft | ScaleMetric::Queue => current - 1,
            _ => needed(ready, ratio).max(current - 1),
        }
        .max(floor);
        if to >= current {
            return None;
        }
        *clock = ScaleClock::default();
        return Some(Decision {
            to,
            reason: format!(
                "{metric} {}{per} below the target {} for {waited} s: {current} → {to} replicas",
                shown(value),
                shown(target)
            ),
        });
    }
    *clock = ScaleClock::default();
    None
}

/// A replica a scale-down may retire, as the order of [`retire_first`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub node_id: String,
    pub slot: i64,
    /// Unhealthy or offline.
    pub unhealthy: bool,
    /// Its price per hour (on-demand costs more than spot).
    pub hourly_usd: f64,
    pub in_flight: usize,
}

/// The replicas a scale-down retires, most preferred first: unhealthy ones, then the most
/// expensive, then the least loaded (spot-interrupted replicas are draining already). Ties go
/// to the highest slot.
pub fn retire_first(mut candidates: Vec<Candidate>, count: usize) -> Vec<Candidate> {
    candidates.sort_by(|a, b| {
        b.unhealthy
            .cmp(&a.unhealthy)
            .then(b.hourly_usd.total_cmp(&a.hourly_usd))
            .then(a.in_flight.cmp(&b.in_flight))
            .then(b.slot.cmp(&a.slot))
    });
    candidates.truncate(count);
    candidates
}

/// Slot swaps that put the `victims` in the slots `to..` a scale-down removes: pairs of (a
/// victim below `to`, a keeper at or above it).
pub fn swaps(victims: &[Candidate], all: &[Candidate], to: i64) -> Vec<(String, String)> {
    let is_victim = |id: &str| victims.iter().any(|v| v.node_id == id);
    let mut keepers_above = all
        .iter()
        .filter(|c| c.slot >= to && !is_victim(&c.node_id));
    victims
        .iter()
        .filter(|v| v.slot < to)
        .filter_map(|v| {
            keepers_above
                .next()
                .map(|k| (v.node_id.clone(), k.node_id.clone()))
        })
        .collect()
}

/// Ready replicas needed to bring a per-replica value at `ratio` × target to the target.
fn needed(ready: usize, ratio: f64) -> u32 {
    let n = (ready as f64 * ratio).ceil();
    if n.is_finite() {
        n.clamp(1.0, 10_000.0) as u32
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(metric: ScaleMetric, target: f64) -> AutoscalePolicy {
        AutoscalePolicy {
            min_replicas: 1,
            max_replicas: 5,
            metric,
            target,
            scale_up_delay_s: 30,
            scale_down_delay_s: 300,
            window_s: 60,
            scale_to_zero_after_s: None,
            cold_start_timeout_s: None,
        }
    }

    fn fresh(value: f64) -> Signal {
        Signal {
            value: Some(value),
            ..Signal::default()
        }
    }

    const S: i64 = 1000;

    #[test]
    fn sustained_load_scales_up_proportionally_after_the_delay() {
        let p = policy(ScaleMetric::InFlight, 4.0);
        let mut clock = ScaleClock::default();
        // 2 ready replicas with 10 requests each: 5 replicas would hold 4 each.
        assert_eq!(decide(&p, 2, 2, fresh(10.0), &mut clock, 0), None);
        assert_eq!(decide(&p, 2, 2, fresh(10.0), &mut clock, 29 * S), None);
        let d = decide(&p, 2, 2, fresh(10.0), &mut clock, 30 * S).unwrap();
        assert_eq!(d.to, 5);
        assert!(
            d.reason.contains(
                "in_flight 10.00 per ready replica above the target 4.00 for 30 s: 2 → 5"
            ),
            "{}",
            d.reason
        );
        assert_eq!(
            clock,
            ScaleClock::default(),
            "a decision restarts the clock"
        );
    }

    #[test]
    fn never_past_max_nor_below_min() {
        let p = policy(ScaleMetric::InFlight, 1.0);
        let mut clock = ScaleClock::default();
        decide(&p, 4, 4, fresh(100.0), &mut clock, 0);
        assert_eq!(
            decide(&p, 4, 4, fresh(100.0), &mut clock, 30 * S)
                .unwrap()
                .to,
            5
        );
        assert_eq!(
            decide(&p, 5, 5, fresh(100.0), &mut clock, 90 * S),
            None,
            "at max"
        );
        let mut clock = ScaleClock::default();
        decide(&p, 1, 1, fresh(0.0), &mut clock, 0);
        assert_eq!(
            decide(&p, 1, 1, fresh(0.0), &mut clock, 400 * S),
            None,
            "at min"
        );
        let back = decide(&p, 9, 3, fresh(1.0), &mut clock, 0).unwrap();
        assert_eq!(
            back.to, 5,
            "an out-of-range count is brought back: {back:?}"
        );
    }

    #[test]
    fn low_load_removes_one_replica_at_a_time_after_the_longer_delay() {
        let p = policy(ScaleMetric::Rps, 10.0);
        let mut clock = ScaleClock::default();
        assert_eq!(decide(&p, 4, 4, fresh(1.0), &mut clock, 0), None);
        assert_eq!(decide(&p, 4, 4, fresh(1.0), &mut clock, 299 * S), None);
        let d = decide(&p, 4, 4, fresh(1.0), &mut clock, 300 * S).unwrap();
        assert_eq!(d.to, 3, "one at a time: {d:?}");
        // Not below what the load needs: 4 replicas at 8.5 rps each need 4.
        let mut clock = ScaleClock::default();
        assert_eq!(
            decide(&p, 4, 4, fresh(8.5), &mut clock, 0),
            None,
            "within the band"
        );
    }

    #[test]
    fn an_oscillating_load_does_not_flap() {
        let p = policy(ScaleMetric::InFlight, 4.0);
        let mut clock = ScaleClock::default();
        // High and low by turns every 10 s: never 30 s above nor 300 s below in a row.
        for step in 0..200 {
            let value = if step % 2 == 0 { 8.0 } else { 1.0 };
            assert_eq!(
                decide(&p, 3, 3, fresh(value), &mut clock, step * 10 * S),
                None,
                "step {step}"
            );
        }
        // Within the band, nothing either.
        for step in 0..100 {
            let value = 4.0 + if step % 2 == 0 { 0.3 } else { -0.3 };
            assert_eq!(
                decide(&p, 3, 3, fresh(value), &mut clock, step * 10 * S),
                None
            );
        }
    }

    #[test]
    fn stale_or_missing_signals_never_scale_down() {
        let p = policy(ScaleMetric::Queue, 2.0);
        let mut clock = ScaleClock::default();
        let stale = Signal {
            value: Some(0.0),
            stale: true,
            ..Signal::default()
        };
        for t in 0..100 {
            assert_eq!(decide(&p, 3, 3, stale, &mut clock, t * 10 * S), None);
        }
        let missing = Signal::default();
        for t in 0..100 {
            assert_eq!(decide(&p, 3, 3, missing, &mut clock, t * 10 * S), None);
        }
        assert_eq!(
            decide(&p, 3, 0, fresh(0.0), &mut clock, 0),
            None,
            "no ready replica"
        );
        // A stale report still lets a real overload add replicas.
        let hot = Signal {
            value: Some(10.0),
            stale: true,
            ..Signal::default()
        };
        decide(&p, 3, 3, hot, &mut clock, 0);
        assert!(decide(&p, 3, 3, hot, &mut clock, 30 * S).is_some());
    }

    #[test]
    fn zero_is_reached_only_after_idling_and_left_at_the_first_waiting_request() {
        let mut p = policy(ScaleMetric::InFlight, 2.0);
        assert_eq!(decide_zero(&p, 0, 3, 0), None, "min 1: never zero");
        p.min_replicas = 0;
        p.scale_to_zero_after_s = Some(60);
        assert_eq!(
            decide_zero(&p, 0, 0, 999 * S),
            None,
            "at zero, nobody waits"
        );
        let up = decide_zero(&p, 0, 2, 0).unwrap();
        assert_eq!(up.to, 1);
        assert!(
            up.reason.contains("2 requests wait at zero replicas"),
            "{}",
            up.reason
        );
        assert_eq!(decide_zero(&p, 2, 0, 59 * S), None);
        let down = decide_zero(&p, 2, 0, 60 * S).unwrap();
        assert_eq!(down.to, 0);
        assert!(
            down.reason.contains("no request for 60 s"),
            "{}",
            down.reason
        );
        // A low value alone never takes it below one replica.
        let mut clock = ScaleClock::default();
        decide(&p, 1, 1, fresh(0.0), &mut clock, 0);
        assert_eq!(decide(&p, 1, 1, fresh(0.0), &mut clock, 999 * S), None);
    }

    #[test]
    fn a_scale_down_retires_the_unhealthy_then_the_dearest_then_the_idlest() {
        let c = |id: &str, slot, unhealthy, hourly_usd, in_flight| Candidate {
            node_id: id.into(),
            slot,
            unhealthy,
            hourly_usd,
            in_flight,
        };
        let all = vec![
            c("spot-busy", 0, false, 0.3, 5),
            c("od-busy", 1, false, 0.8, 5),
            c("sick", 2, true, 0.3, 0),
            c("spot-idle", 3, false, 0.3, 0),
        ];
        let order: Vec<String> = retire_first(all.clone(), 4)
            .into_iter()
            .map(|c| c.node_id)
            .collect();
        assert_eq!(order, ["sick", "od-busy", "spot-idle", "spot-busy"]);
        // 4 → 2: the sick and the on-demand replica go; the on-demand one (slot 1) trades
        // places with the keeper in slot 3, so the removed slots 2 and 3 hold the victims.
        let victims = retire_first(all.clone(), 2);
        assert_eq!(
            swaps(&victims, &all, 2),
            vec![("od-busy".to_string(), "spot-idle".to_string())]
        );
        // Victims already in the removed slots: nothing moves.
        let top = vec![c("a", 0, false, 0.3, 9), c("b", 1, false, 0.3, 0)];
        assert!(swaps(&retire_first(top.clone(), 1), &top, 1).is_empty());
    }

    #[test]
    fn ttft_moves_one_replica_at_a_time() {
        let p = policy(ScaleMetric::Ttft, 0.5);
        let mut clock = ScaleClock::default();
        decide(&p, 2, 2, fresh(5.0), &mut clock, 0);
        let d = decide(&p, 2, 2, fresh(5.0), &mut clock, 30 * S).unwrap();
        assert_eq!(d.to, 3);
        assert!(
            d.reason.contains("ttft 5.00 s above the target 0.50 s"),
            "{}",
            d.reason
        );
        decide(&p, 3, 3, fresh(0.1), &mut clock, 0);
        assert_eq!(
            decide(&p, 3, 3, fresh(0.1), &mut clock, 300 * S)
                .unwrap()
                .to,
            2
        );
    }

    #[test]
    fn replicas_still_launching_count_toward_a_scale_up() {
        let p = policy(ScaleMetric::InFlight, 4.0);
        let mut clock = ScaleClock::default();
        // Decided 2 → 4; two launches under way, the 2 ready ones still at 8 each.
        decide(&p, 4, 2, fresh(8.0), &mut clock, 0);
        assert_eq!(
            decide(&p, 4, 2, fresh(8.0), &mut clock, 60 * S),
            None,
            "the 4 (2 starting) already hold it"
        );
        // More load than the 4 hold: the difference, not 2 more on top.
        let d = decide(&p, 4, 2, fresh(10.0), &mut clock, 90 * S).unwrap();
        assert_eq!(d.to, 5);
        // ttft adds one only once the replica it added is ready.
        let p = policy(ScaleMetric::Ttft, 0.5);
        let mut clock = ScaleClock::default();
        decide(&p, 3, 2, fresh(5.0), &mut clock, 0);
        assert_eq!(decide(&p, 3, 2, fresh(5.0), &mut clock, 60 * S), None);
        // It is ready, and the value has been above the band all along.
        assert_eq!(
            decide(&p, 3, 3, fresh(5.0), &mut clock, 61 * S).unwrap().to,
            4
        );
    }

    #[test]
    fn queue_adds_what_runs_everything_waiting_and_removes_one_at_a_time() {
        let p = policy(ScaleMetric::Queue, 1.0);
        let mut clock = ScaleClock::default();
        // 2 replicas running 8 each with 24 waiting in all (12 per replica against 1): 40
        // sequences at 8 per replica need 5.
        let busy = Signal {
            value: Some(12.0),
            growth: Some(40.0 / 16.0),
            ..Signal::default()
        };
        decide(&p, 2, 2, busy, &mut clock, 0);
        assert_eq!(decide(&p, 2, 2, busy, &mut clock, 30 * S).unwrap().to, 5);
        // Without the running count, one more.
        let unknown = Signal {
            growth: None,
            ..busy
        };
        let mut clock = ScaleClock::default();
        decide(&p, 2, 2, unknown, &mut clock, 0);
        assert_eq!(decide(&p, 2, 2, unknown, &mut clock, 30 * S).unwrap().to, 3);
        // Nothing waiting says nothing of how much room there is: one at a time going down.
        let mut clock = ScaleClock::default();
        decide(&p, 5, 5, fresh(0.0), &mut clock, 0);
        assert_eq!(
            decide(&p, 5, 5, fresh(0.0), &mut clock, 300 * S)
                .unwrap()
                .to,
            4
        );
    }

    #[test]
    fn a_nearly_full_kv_cache_holds_a_scale_down() {
        let p = policy(ScaleMetric::Rps, 10.0);
        let mut clock = ScaleClock::default();
        let full = Signal {
            value: Some(1.0),
            kv_cache_full: true,
            ..Signal::default()
        };
        for t in 0..100 {
            assert_eq!(decide(&p, 4, 4, full, &mut clock, t * 10 * S), None);
        }
    }
}
