//! The control plane's answer to a heartbeat: the node's status, what it wants the agent to do,
//! and when to report next.

use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// What the control plane tells an agent after a registration or heartbeat.
///
/// `Status` is the node's status: the control plane's own status enum when it answers; an
/// agent, which acts only on `desired` and `heartbeat_interval_s`, reads it as [`IgnoredAny`]
/// (the registration answer uses a `status` field of its own, so the agent must not insist on
/// one shape). An agent also reads an answer without `node_id`, `status` or `desired`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentAck<Status = IgnoredAny> {
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub status: Status,
    /// `run`, or `drain` when the node should finish in-flight work and take no more.
    #[serde(default)]
    pub desired: Desired,
    pub heartbeat_interval_s: f64,
}

impl<Status> AgentAck<Status> {
    /// When to send the next heartbeat, bounded to 50 ms .. 1 h whatever the answer says.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval_s.clamp(0.05, 3600.0))
    }
}

/// What the control plane wants from the agent, serialised as `run`, `drain` or `stop`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Serve traffic. Also what an answer without `desired` means.
    #[default]
    Run,
    /// Finish in-flight work and take no more: the node is draining or its machine is waiting to
    /// be torn down. The agent keeps reporting.
    Drain,
    /// The agent exits (code 4) and is not restarted by its service manager. The control plane
    /// does not send it today; agents obey it.
    Stop,
    /// A value this agent does not know, from a newer control plane: it carries on as before
    /// rather than treating the whole answer as unreadable.
    #[serde(other)]
    Other,
}

impl Desired {
    /// The wire form: `run`, `drain`, `stop` (`other` for a value this build does not know).
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Run => "run",
            Desired::Drain => "drain",
            Desired::Stop => "stop",
            Desired::Other => "other",
        }
    }
}

impl std::fmt::Display for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the wire form, so `ack.desired == "drain"` reads as the JSON does.
impl PartialEq<&str> for Desired {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_is_the_same_string_on_the_wire() {
        for (desired, text) in [
            (Desired::Run, "run"),
            (Desired::Drain, "drain"),
            (Desired::Stop, "stop"),
        ] {
            let json = serde_json::to_string(&desired).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Desired>(&json).unwrap(), desired);
            assert_eq!(desired, text);
        }
    }

    #[test]
    fn the_control_plane_answer_is_serialised_in_field_order() {
        let ack = AgentAck {
            node_id: "n-1".into(),
            status: "ready",
            desired: Desired::Drain,
            heartbeat_interval_s: 5.0,
        };
        assert_eq!(
            serde_json::to_string(&ack).unwrap(),
            r#"{"node_id":"n-1","status":"ready","desired":"drain","heartbeat_interval_s":5.0}"#
        );
    }

    #[test]
    fn an_agent_reads_any_answer_with_an_interval() {
        let ack: AgentAck = serde_json::from_str(
            r#"{"status": "registered", "node_id": "n-1", "node_status": "registered", "heartbeat_interval_s": 0.1}"#,
        )
        .unwrap();
        assert_eq!(ack.desired, Desired::Run);
        assert_eq!(ack.interval(), Duration::from_millis(100));
        let ack: AgentAck =
            serde_json::from_str(r#"{"desired": "hibernate", "heartbeat_interval_s": 0}"#).unwrap();
        assert_eq!(ack.desired, Desired::Other);
        assert_eq!(ack.interval(), Duration::from_millis(50), "bounded below");
        assert!(serde_json::from_str::<AgentAck>(r#"{"desired": "run"}"#).is_err());
    }
}
