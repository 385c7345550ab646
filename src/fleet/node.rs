//! What a node is: the record the API shows, the bodies agents and admins send to change it, and
//! the validation those bodies get before anything is stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use skylaunch_protocol::validate::{check_endpoint_url, check_labels, check_text, Invalid};

use super::status::NodeStatus;
use super::FleetError;
use crate::clock::{serde_opt_rfc3339, serde_rfc3339};

// The bodies an agent sends, and what they carry, are the agent's wire types, shared with
// `skylaunch-agent` (protocol/); so are their limits (`validate`).
pub use skylaunch_protocol::{
    GpuReport, HeartbeatReport, ModelServerReport, QueueReport, Registration, SpotNotice,
};

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub status: NodeStatus,
    /// Why the node is in its status (the reason of the last transition).
    pub status_reason: Option<String>,
    pub model_name: String,
    pub endpoint_url: Option<String>,
    pub provider: String,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub gpu_type: Option<String>,
    pub gpu_count: Option<i64>,
    pub instance_type: Option<String>,
    pub spot_instance: bool,
    pub labels: BTreeMap<String, String>,
    pub agent_version: Option<String>,
    pub health_score: Option<f64>,
    #[serde(with = "serde_opt_rfc3339")]
    pub last_heartbeat_at: Option<i64>,
    /// The agent's latest measurements, as it sent them.
    pub last_heartbeat: Option<HeartbeatReport>,
    pub launch_job_id: Option<String>,
    /// The deployment this node is a replica of; `None` outside any deployment.
    pub deployment: Option<String>,
    /// The deployment revision the replica runs.
    pub deployment_revision: Option<i64>,
    /// The replica's slot in its deployment (0 to replicas - 1); a replacement takes the slot
    /// of the node it replaces.
    pub deployment_slot: Option<i64>,
    #[serde(with = "serde_opt_rfc3339")]
    pub registered_at: Option<i64>,
    #[serde(with = "serde_rfc3339")]
    pub created_at: i64,
    #[serde(with = "serde_rfc3339")]
    pub updated_at: i64,
    #[serde(skip)]
    pub token_hash: String,
    /// Bumped by every stored change other than heartbeat telemetry (see `fleet/store.rs`).
    #[serde(skip)]
    pub revision: i64,
    /// The admin set `endpoint_url` when creating the node: the agent cannot change it.
    #[serde(skip)]
    pub endpoint_pinned: bool,
    /// The node lives on this machine (the local provider): its endpoint may be on loopback.
    #[serde(skip)]
    pub on_this_host: bool,
    /// The model server's own API key (vLLM's `--api-key`), minted with each launch's node
    /// token; the load balancer sends it, and no API answer shows it.
    #[serde(skip)]
    pub model_key: Option<String>,
}

/// Which deployment a new node is a replica of, fixed when the node is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub deployment: String,
    pub revision: i64,
    pub slot: i64,
}

/// `POST /admin/nodes`: a host that skylaunch did not launch.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    pub name: String,
    pub model_name: String,
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl From<Invalid> for FleetError {
    fn from(e: Invalid) -> FleetError {
        FleetError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

/// Node names: 1-63 characters of letters, digits, `-`, `_` and `.`, starting with a letter or digit.
pub fn check_node_name(name: &str) -> Result<(), FleetError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::from(Invalid::new(
            "name",
            format!(
                "node name {name:?} is invalid: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        )))
    }
}

impl NewNode {
    /// The same limits as an agent's registration, and a name like a DNS label.
    pub fn validate(&self) -> Result<(), FleetError> {
        check_node_name(&self.name)?;
        check_text("model_name", &self.model_name, 256)?;
        if let Some(url) = &self.endpoint_url {
            check_endpoint_url("endpoint_url", url)?;
        }
        if let Some(provider) = &self.provider {
            check_text("provider", provider, 64)?;
        }
        if let Some(labels) = &self.labels {
            check_labels(labels)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_allow_dns_like_names_only() {
        assert!(check_node_name("gpu-node-1").is_ok());
        assert!(check_node_name("a.b_c").is_ok());
        for bad in ["", "-x", "has space", "x;rm -rf /", &"a".repeat(64)] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }
}
