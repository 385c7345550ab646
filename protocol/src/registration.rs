//! The body of an agent's registration. (`///` comments on these types become descriptions in
//! the control plane's `/openapi.json`; notes meant only for readers of the code are `//`.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /admin/nodes/register`: what the agent found out about its VM.
// Optional fields are sent as `null` when unknown (no `skip_serializing_if`); the control plane
// takes a missing field and a `null` alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registration {
    pub provider: String,
    pub region: String,
    #[serde(default)]
    pub zone: Option<String>,
    pub model_name: String,
    pub endpoint_url: String,
    pub gpu_type: String,
    pub instance_type: String,
    pub spot_instance: bool,
    #[serde(default)]
    pub gpu_count: Option<u32>,
    #[serde(default)]
    pub agent_version: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}
