//! Node status and the rules that move a node between statuses: what a heartbeat, a
//! registration or the passing of time does to it. Pure functions over plain values, so every
//! rule is tested without a server or a clock.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// VM being created, or a bring-your-own host whose agent has not registered yet.
    Launching,
    /// Agent registered; the model server is not known to be ready yet.
    Registered,
    /// Healthy and routable.
    Ready,
    /// Low health score, model server not ready, or missed heartbeats.
    Unhealthy,
    /// No heartbeat for a long time, or the agent said it is going away.
    Offline,
    /// No new traffic: set by an admin or by a spot interruption notice.
    Draining,
    /// Its machine must go, but the provider has not confirmed that it is gone (a teardown
    /// failed): retried with backoff until it is, then `terminated`.
    TeardownPending,
    Terminated,
}

impl NodeStatus {
    pub const ALL: [NodeStatus; 8] = [
        NodeStatus::Launching,
        NodeStatus::Registered,
        NodeStatus::Ready,
        NodeStatus::Unhealthy,
        NodeStatus::Offline,
        NodeStatus::Draining,
        NodeStatus::TeardownPending,
        NodeStatus::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Launching => "launching",
            NodeStatus::Registered => "registered",
            NodeStatus::Ready => "ready",
            NodeStatus::Unhealthy => "unhealthy",
            NodeStatus::Offline => "offline",
            NodeStatus::Draining => "draining",
            NodeStatus::TeardownPending => "teardown_pending",
            NodeStatus::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<NodeStatus> {
        NodeStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Statuses that only an admin (or a spot notice, or deletion) changes; heartbeats and the
    /// sweeper leave them alone.
    pub fn is_sticky(self) -> bool {
        matches!(
            self,
            NodeStatus::Draining | NodeStatus::TeardownPending | NodeStatus::Terminated
        )
    }

    /// On its way out: nothing an agent says brings it back.
    pub fn is_leaving(self) -> bool {
        matches!(self, NodeStatus::TeardownPending | NodeStatus::Terminated)
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The health model's thresholds; defaults are documented in the README and `serve --help`.
#[derive(Debug, Clone)]
pub struct HealthPolicy {
    pub heartbeat_interval: Duration,
    /// Heartbeats missed in a row before a ready node becomes unhealthy.
    pub missed_heartbeats: u32,
    pub offline_after: Duration,
    pub min_health_score: f64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            heartbeat_interval: Duration::from_secs(5),
            missed_heartbeats: 3,
            offline_after: Duration::from_secs(60),
            min_health_score: 0.5,
        }
    }
}

/// A status change and the human reason recorded with it as a node event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub to: NodeStatus,
    pub reason: String,
}

/// What a heartbeat says, reduced to what the health model needs.
#[derive(Debug, Clone)]
pub struct HeartbeatSignal {
    pub health_score: f64,
    /// `None` when the agent does not report model readiness; the score alone decides then.
    pub model_ready: Option<bool>,
    /// A description of the spot interruption notice, when the agent reports one.
    pub spot_notice: Option<String>,
    pub going_away: bool,
}

/// The status a heartbeat moves a node to, or `None` when it stays where it is.
pub fn after_heartbeat(
    current: NodeStatus,
    hb: &HeartbeatSignal,
    policy: &HealthPolicy,
) -> Option<Transition> {
    if current.is_leaving() {
        return None;
    }
    if let Some(notice) = &hb.spot_notice {
        return (current != NodeStatus::Draining).then(|| Transition {
            to: NodeStatus::Draining,
            reason: format!("spot interruption notice ({notice})"),
        });
    }
    if current.is_sticky() {
        return None;
    }
    let next = if hb.going_away {
        Transition {
            to: NodeStatus::Offline,
            reason: "agent is shutting down".to_string(),
        }
    } else if hb.model_ready == Some(false) {
        Transition {
            to: NodeStatus::Unhealthy,
            reason: "model server not ready".to_string(),
        }
    } else if hb.health_score < policy.min_health_score {
        Transition {
            to: NodeStatus::Unhealthy,
            reason: format!(
                "health score {} < {}",
                fmt_score(hb.health_score),
                fmt_score(policy.min_health_score)
            ),
        }
    } else {
        Transition {
            to: NodeStatus::Ready,
            reason: format!(
                "model server ready, health score {} >= {}",
                fmt_score(hb.health_score),
                fmt_score(policy.min_health_score)
            ),
        }
    };
    (next.to != current).then_some(next)
}

/// The status the passing of time moves a node to, given how long ago it was last heard from.
pub fn after_silence(
    current: NodeStatus,
    silent_for: Duration,
    policy: &HealthPolicy,
) -> Option<Transition> {
    match current {
        NodeStatus::Registered | NodeStatus::Ready | NodeStatus::Unhealthy => {}
        // Launching belongs to its launch job; offline is already as far as silence goes.
        _ => return None,
    }
    if silent_for >= policy.offline_after {
        return Some(Transition {
            to: NodeStatus::Offline,
            reason: format!(
                "no heartbeat for {}",
                crate::clock::fmt_duration(policy.offline_after)
            ),
        });
    }
    let missed_limit = policy.heartbeat_interval * policy.missed_heartbeats;
    if silent_for >= missed_limit && current != NodeStatus::Unhealthy {
        return Some(Transition {
            to: NodeStatus::Unhealthy,
            reason: format!("missed {} heartbeats", policy.missed_heartbeats),
        });
    }
    None
}

/// The status a (re-)registration moves a node to.
pub fn after_registration(current: NodeStatus) -> Option<Transition> {
    match current {
        NodeStatus::Launching | NodeStatus::Offline => Some(Transition {
            to: NodeStatus::Registered,
            reason: "agent registered".to_string(),
        }),
        // An agent restart on a live node: the next heartbeat decides.
        _ => None,
    }
}

fn fmt_score(score: f64) -> String {
    let s = format!("{score:.3}");
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(score: f64) -> HeartbeatSignal {
        HeartbeatSignal {
            health_score: score,
            model_ready: Some(true),
            spot_notice: None,
            going_away: false,
        }
    }

    fn policy() -> HealthPolicy {
        HealthPolicy::default()
    }

    #[test]
    fn healthy_heartbeat_makes_registered_node_ready() {
        let t = after_heartbeat(NodeStatus::Registered, &hb(0.9), &policy()).unwrap();
        assert_eq!(t.to, NodeStatus::Ready);
    }

    #[test]
    fn low_score_makes_ready_node_unhealthy_with_score_in_reason() {
        let t = after_heartbeat(NodeStatus::Ready, &hb(0.31), &policy()).unwrap();
        assert_eq!(t.to, NodeStatus::Unhealthy);
        assert_eq!(t.reason, "health score 0.31 < 0.5");
    }

    #[test]
    fn score_exactly_at_threshold_is_ready() {
        let t = after_heartbeat(NodeStatus::Unhealthy, &hb(0.5), &policy()).unwrap();
        assert_eq!(t.to, NodeStatus::Ready);
    }

    #[test]
    fn model_server_not_ready_is_unhealthy_whatever_the_score() {
        let mut signal = hb(1.0);
        signal.model_ready = Some(false);
        let t = after_heartbeat(NodeStatus::Ready, &signal, &policy()).unwrap();
        assert_eq!(t.to, NodeStatus::Unhealthy);
        assert_eq!(t.reason, "model server not ready");
    }

    #[test]
    fn unreported_readiness_leaves_the_decision_to_the_score() {
        let mut signal = hb(0.8);
        signal.model_ready = None;
        let t = after_heartbeat(NodeStatus::Registered, &signal, &policy()).unwrap();
        assert_eq!(t.to, NodeStatus::Ready);
    }

    #[test]
    fn same_status_is_no_transition() {
        assert_eq!(
            after_heartbeat(NodeStatus::Ready, &hb(0.9), &policy()),
            None
        );
    }

    #[test]
    fn heartbeat_never_overrides_draining_or_terminated() {
        assert_eq!(
            after_heartbeat(NodeStatus::Draining, &hb(1.0), &policy()),
            None
        );
        assert_eq!(
            after_heartbeat(NodeStatus::Terminated, &hb(1.0), &policy()),
            None
        );
        let mut notice = hb(1.0);
        notice.spot_notice = Some("aws: terminate".into());
        assert_eq!(
            after_heartbeat(NodeStatus::Terminated, &notice, &policy()),
            None
        );
        for leaving in [NodeStatus::TeardownPending, NodeStatus::Terminated] {
            assert_eq!(after_heartbeat(leaving, &hb(1.0), &policy()), None);
            assert_eq!(after_heartbeat(leaving, &notice, &policy()), None);
            assert_eq!(
                after_silence(leaving, Duration::from_secs(3600), &policy()),
                None
            );
            assert_eq!(after_registration(leaving), None);
        }
        assert_eq!(
            after_heartbeat(NodeStatus::Draining, &notice, &policy()),
            None
        );
    }

    #[test]
    fn spot_notice_drains_the_node() {
        let mut signal = hb(1.0);
        signal.spot_notice = Some("aws: terminate at 2026-11-22T20:00:00Z".into());
        let t = after_heartbeat(NodeStatus::Ready, &signal, &policy()).unwrap();
        assert_eq!(t.to, NodeStatus::Draining);
        assert!(
            t.reason.starts_with("spot interruption notice"),
            "{}",
            t.reason
        );
    }

    #[test]
    fn going_away_heartbeat_takes_node_offline() {
        let mut signal = hb(1.0);
        signal.going_away = true;
        let t = after_heartbeat(NodeStatus::Ready, &signal, &policy()).unwrap();
        assert_eq!(t.to, NodeStatus::Offline);
    }

    #[test]
    fn three_missed_intervals_make_ready_node_unhealthy() {
        let p = policy();
        assert_eq!(
            after_silence(NodeStatus::Ready, Duration::from_millis(14_999), &p),
            None
        );
        let t = after_silence(NodeStatus::Ready, Duration::from_secs(15), &p).unwrap();
        assert_eq!(t.to, NodeStatus::Unhealthy);
        assert_eq!(t.reason, "missed 3 heartbeats");
    }

    #[test]
    fn a_minute_of_silence_takes_node_offline() {
        let p = policy();
        for status in [
            NodeStatus::Registered,
            NodeStatus::Ready,
            NodeStatus::Unhealthy,
        ] {
            let t = after_silence(status, Duration::from_secs(60), &p).unwrap();
            assert_eq!(t.to, NodeStatus::Offline);
            assert_eq!(t.reason, "no heartbeat for 60 s");
        }
    }

    #[test]
    fn silence_never_moves_launching_draining_offline_or_terminated() {
        let long = Duration::from_secs(3600);
        for status in [
            NodeStatus::Launching,
            NodeStatus::Draining,
            NodeStatus::Offline,
            NodeStatus::Terminated,
        ] {
            assert_eq!(after_silence(status, long, &policy()), None, "{status}");
        }
    }

    #[test]
    fn registration_brings_launching_and_offline_nodes_to_registered() {
        assert_eq!(
            after_registration(NodeStatus::Launching).map(|t| t.to),
            Some(NodeStatus::Registered)
        );
        assert_eq!(
            after_registration(NodeStatus::Offline).map(|t| t.to),
            Some(NodeStatus::Registered)
        );
        assert_eq!(after_registration(NodeStatus::Ready), None);
        assert_eq!(after_registration(NodeStatus::Draining), None);
    }

    #[test]
    fn status_names_round_trip() {
        for s in NodeStatus::ALL {
            assert_eq!(NodeStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(NodeStatus::parse("bogus"), None);
    }
}
