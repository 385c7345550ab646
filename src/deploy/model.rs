//! What a deployment and its actions are: the stored records, their states, and how an action's
//! deterministic id is derived from the drift it answers.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::spec::{DeploymentRequest, Market};
use crate::clock::{serde_opt_rfc3339, serde_rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Replicas are being launched or replaced.
    Converging,
    /// Ready replicas of the current revision = desired.
    Serving,
    /// A replica is unhealthy or gone and its replacement is not ready yet.
    Degraded,
    /// Replicas cannot be placed (capacity, quota); launches back off until `unsatisfiable_until`.
    Unsatisfiable,
    /// The current revision's replicas kept failing to launch; the rollout stopped.
    RolloutFailed,
    /// Deleted: its replicas are drained and terminated, then it disappears.
    Deleting,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 6] = [
        DeploymentStatus::Converging,
        DeploymentStatus::Serving,
        DeploymentStatus::Degraded,
        DeploymentStatus::Unsatisfiable,
        DeploymentStatus::RolloutFailed,
        DeploymentStatus::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Converging => "converging",
            DeploymentStatus::Serving => "serving",
            DeploymentStatus::Degraded => "degraded",
            DeploymentStatus::Unsatisfiable => "unsatisfiable",
            DeploymentStatus::RolloutFailed => "rollout_failed",
            DeploymentStatus::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<DeploymentStatus> {
        DeploymentStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A deployment as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub name: String,
    /// Tells apart two deployments that had the same name at different times.
    pub uid: String,
    pub revision: i64,
    /// The current desired state; `spec.replicas` is the desired replica count.
    pub spec: DeploymentRequest,
    pub status: DeploymentStatus,
    pub reason: Option<String>,
    pub unsatisfiable_until: Option<i64>,
    /// Replica launches of the current revision that failed in a row.
    pub failures: i64,
    pub last_failure_at: Option<i64>,
    pub deleting: bool,
    /// The autoscaler's latest decision, which names the drift of the launches and drains it
    /// causes.
    pub last_scale: Option<ScaleDecision>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One decision of the autoscaler: from how many replicas to how many, and why (the metric's
/// value against its target).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ScaleDecision {
    pub from: u32,
    pub to: u32,
    pub reason: String,
    /// When it was made (Unix ms).
    pub at: i64,
}

impl ScaleDecision {
    /// Whether this decision added `slot` (a launch there answers `scale_up`).
    pub fn added(&self, slot: i64) -> bool {
        (i64::from(self.from)..i64::from(self.to)).contains(&slot)
    }

    /// Whether this decision (a scale-down) leaves `slot` outside the count: a replica
    /// retired there answers `scale_down`, also one left over from an earlier scale-down.
    pub fn removed(&self, slot: i64) -> bool {
        self.to < self.from && slot >= i64::from(self.to)
    }
}

impl Deployment {
    /// The replica count the reconciler converges to (0 once deleted).
    pub fn desired(&self) -> i64 {
        if self.deleting {
            0
        } else {
            i64::from(self.spec.replicas)
        }
    }
}

/// What the reconciler does about a drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    LaunchReplica,
    ReplaceReplica,
    DrainReplica,
    TerminateReplica,
}

impl ActionKind {
    pub const ALL: [ActionKind; 4] = [
        ActionKind::LaunchReplica,
        ActionKind::ReplaceReplica,
        ActionKind::DrainReplica,
        ActionKind::TerminateReplica,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::LaunchReplica => "launch_replica",
            ActionKind::ReplaceReplica => "replace_replica",
            ActionKind::DrainReplica => "drain_replica",
            ActionKind::TerminateReplica => "terminate_replica",
        }
    }

    pub fn parse(s: &str) -> Option<ActionKind> {
        ActionKind::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the action launches a replica (through a launch job).
    pub fn launches(self) -> bool {
        matches!(self, ActionKind::LaunchReplica | ActionKind::ReplaceReplica)
    }
}

/// How what runs differs from the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Drift {
    MissingReplica,
    UnhealthyReplica,
    SpotInterruption,
    OutdatedRevision,
    ExcessReplica,
    /// The autoscaler raised the replica count.
    ScaleUp,
    /// The autoscaler lowered it.
    ScaleDown,
}

impl Drift {
    pub const ALL: [Drift; 7] = [
        Drift::MissingReplica,
        Drift::UnhealthyReplica,
        Drift::SpotInterruption,
        Drift::OutdatedRevision,
        Drift::ExcessReplica,
        Drift::ScaleUp,
        Drift::ScaleDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Drift::MissingReplica => "missing_replica",
            Drift::UnhealthyReplica => "unhealthy_replica",
            Drift::SpotInterruption => "spot_interruption",
            Drift::OutdatedRevision => "outdated_revision",
            Drift::ExcessReplica => "excess_replica",
            Drift::ScaleUp => "scale_up",
            Drift::ScaleDown => "scale_down",
        }
    }

    pub fn parse(s: &str) -> Option<Drift> {
        Drift::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Runs at once.
    Low,
    /// Waits as `pending` until an admin approves it.
    Guarded,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Guarded => "guarded",
        }
    }

    pub fn parse(s: &str) -> Option<Risk> {
        [Risk::Low, Risk::Guarded]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    Pending,
    Approved,
    Running,
    Completed,
    Failed,
    Rejected,
    Cancelled,
}

impl ActionState {
    pub const ALL: [ActionState; 7] = [
        ActionState::Pending,
        ActionState::Approved,
        ActionState::Running,
        ActionState::Completed,
        ActionState::Failed,
        ActionState::Rejected,
        ActionState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::Approved => "approved",
            ActionState::Running => "running",
            ActionState::Completed => "completed",
            ActionState::Failed => "failed",
            ActionState::Rejected => "rejected",
            ActionState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ActionState> {
        ActionState::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            ActionState::Completed
                | ActionState::Failed
                | ActionState::Rejected
                | ActionState::Cancelled
        )
    }
}

/// One action of a deployment, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub id: String,
    pub deployment: String,
    #[serde(skip)]
    pub uid: String,
    /// The revision whose drift this answers.
    pub revision: i64,
    /// The replica slot it concerns.
    pub slot: Option<i64>,
    pub kind: ActionKind,
    pub drift: Drift,
    pub risk: Risk,
    pub state: ActionState,
    /// The market a launch asks for.
    pub market: Option<Market>,
    pub reason: Option<String>,
    pub node_id: Option<String>,
    pub launch_job_id: Option<String>,
    #[serde(with = "serde_rfc3339")]
    pub created_at: i64,
    #[serde(with = "serde_rfc3339")]
    pub updated_at: i64,
}

/// A deployment's view of one of its nodes, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaRow {
    pub node_id: String,
    pub name: String,
    pub status: crate::fleet::status::NodeStatus,
    pub revision: Option<i64>,
    pub slot: Option<i64>,
    pub market: Market,
    pub launch_job_id: Option<String>,
    pub health_score: Option<f64>,
    #[serde(with = "serde_opt_rfc3339")]
    pub last_heartbeat_at: Option<i64>,
}

/// The id of the action answering a drift: the same inputs always give the same id, so every
/// process (and every tick, and a restart) that sees one drift writes one row.
/// `incarnation` tells apart the successive replicas of one slot; `node` the node a
/// node-specific action concerns.
pub fn action_id(
    uid: &str,
    revision: i64,
    slot: Option<i64>,
    drift: Drift,
    kind: ActionKind,
    incarnation: i64,
    node: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{uid}\n{revision}\n{}\n{}\n{}\n{incarnation}\n{}",
        slot.map_or_else(|| "-".to_string(), |s| s.to_string()),
        drift.as_str(),
        kind.as_str(),
        node.unwrap_or("-")
    ));
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("act-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_drift_gives_the_same_id_and_another_drift_another() {
        let a = action_id(
            "u",
            1,
            Some(0),
            Drift::MissingReplica,
            ActionKind::LaunchReplica,
            0,
            None,
        );
        let b = action_id(
            "u",
            1,
            Some(0),
            Drift::MissingReplica,
            ActionKind::LaunchReplica,
            0,
            None,
        );
        assert_eq!(a, b);
        assert!(a.starts_with("act-") && a.len() == 28);
        for other in [
            action_id(
                "u",
                2,
                Some(0),
                Drift::MissingReplica,
                ActionKind::LaunchReplica,
                0,
                None,
            ),
            action_id(
                "u",
                1,
                Some(1),
                Drift::MissingReplica,
                ActionKind::LaunchReplica,
                0,
                None,
            ),
            action_id(
                "u",
                1,
                Some(0),
                Drift::MissingReplica,
                ActionKind::LaunchReplica,
                1,
                None,
            ),
            action_id(
                "v",
                1,
                Some(0),
                Drift::MissingReplica,
                ActionKind::LaunchReplica,
                0,
                None,
            ),
            action_id(
                "u",
                1,
                Some(0),
                Drift::ExcessReplica,
                ActionKind::DrainReplica,
                0,
                Some("n"),
            ),
        ] {
            assert_ne!(a, other);
        }
    }
}
