//! What happened to a node: the node event record the API shows, and the kinds of event. Every
//! status change is one (with its old and new status); a few things worth knowing that change
//! no status are too (a refused registration, an ejection by the load balancer, a failed
//! teardown retry).

use std::fmt;

use serde::Serialize;

use super::status::NodeStatus;
use crate::clock::serde_rfc3339;

#[derive(Debug, Clone, Serialize)]
pub struct NodeEvent {
    pub id: i64,
    #[serde(with = "serde_rfc3339")]
    pub at: i64,
    pub kind: NodeEventKind,
    pub from_status: Option<NodeStatus>,
    pub to_status: Option<NodeStatus>,
    pub reason: String,
}

/// What caused a node event; stored and shown as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeEventKind {
    /// The node was made; it waits for its agent.
    Created,
    /// Its agent registered.
    Registered,
    /// A heartbeat changed its status.
    Heartbeat,
    /// A heartbeat carried a spot interruption notice.
    SpotInterruption,
    /// An admin (or a launch on its behalf) changed its status.
    Admin,
    /// The sweeper changed its status after the agent went silent.
    Sweeper,
    /// An agent's registration was refused (another model, an endpoint it may not use).
    RegistrationRefused,
    /// The load balancer's passive health took it out of routing for a while.
    Ejected,
    /// A retried teardown of its machine failed again.
    TeardownRetryFailed,
}

impl NodeEventKind {
    pub const ALL: [NodeEventKind; 9] = [
        NodeEventKind::Created,
        NodeEventKind::Registered,
        NodeEventKind::Heartbeat,
        NodeEventKind::SpotInterruption,
        NodeEventKind::Admin,
        NodeEventKind::Sweeper,
        NodeEventKind::RegistrationRefused,
        NodeEventKind::Ejected,
        NodeEventKind::TeardownRetryFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeEventKind::Created => "created",
            NodeEventKind::Registered => "registered",
            NodeEventKind::Heartbeat => "heartbeat",
            NodeEventKind::SpotInterruption => "spot_interruption",
            NodeEventKind::Admin => "admin",
            NodeEventKind::Sweeper => "sweeper",
            NodeEventKind::RegistrationRefused => "registration_refused",
            NodeEventKind::Ejected => "ejected",
            NodeEventKind::TeardownRetryFailed => "teardown_retry_failed",
        }
    }

    pub fn parse(s: &str) -> Option<NodeEventKind> {
        NodeEventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for NodeEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialise_to_their_stored_names() {
        for kind in NodeEventKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
            assert_eq!(NodeEventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(NodeEventKind::parse("nonsense"), None);
    }
}
