//! What a node is: the record the API shows, the bodies agents and admins send to change it, and
//! the validation those bodies get before anything is stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::status::NodeStatus;
use super::FleetError;
use crate::clock::{serde_opt_rfc3339, serde_rfc3339};

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

/// `POST /admin/nodes/register`: what the agent found out about its VM.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
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

/// `POST /admin/nodes/<id>/heartbeat`. Unknown fields are ignored so newer agents keep working.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatReport {
    pub health_score: f64,
    #[serde(default)]
    pub model_server: Option<ModelServerReport>,
    #[serde(default)]
    pub gpu: Option<GpuReport>,
    #[serde(default)]
    pub queue: Option<QueueReport>,
    #[serde(default)]
    pub spot_interruption: Option<SpotNotice>,
    #[serde(default)]
    pub going_away: bool,
    #[serde(default)]
    pub agent_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelServerReport {
    pub ready: bool,
    #[serde(default)]
    pub probe_latency_ms: Option<f64>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuReport {
    pub present: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub utilization_pct: Option<f64>,
    #[serde(default)]
    pub memory_used_mib: Option<f64>,
    #[serde(default)]
    pub memory_total_mib: Option<f64>,
    #[serde(default)]
    pub temperature_c: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueReport {
    #[serde(default)]
    pub running: Option<f64>,
    #[serde(default)]
    pub waiting: Option<f64>,
    #[serde(default)]
    pub kv_cache_usage: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpotNotice {
    pub source: String,
    pub action: String,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

impl SpotNotice {
    pub fn describe(&self) -> String {
        match &self.time {
            Some(time) => format!("{}: {} at {}", self.source, self.action, time),
            None => format!("{}: {}", self.source, self.action),
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> FleetError {
    FleetError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), FleetError> {
    if value.trim().is_empty() {
        return Err(invalid(field, format!("`{field}` must not be empty")));
    }
    if value.len() > max {
        return Err(invalid(
            field,
            format!("`{field}` is longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("`{field}` contains control characters"),
        ));
    }
    Ok(())
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
        Err(invalid(
            "name",
            format!(
                "node name {name:?} is invalid: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        ))
    }
}

/// An agent's free text (an error, a notice's detail): only its length is bounded.
fn check_optional(field: &str, value: Option<&str>, max: usize) -> Result<(), FleetError> {
    match value {
        Some(v) if v.len() > max => Err(invalid(
            field,
            format!("`{field}` is longer than {max} characters"),
        )),
        _ => Ok(()),
    }
}

pub fn check_endpoint_url(field: &str, url: &str) -> Result<(), FleetError> {
    check_text(field, url, 2048)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest)
            if !rest.is_empty() && !rest.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(invalid(
            field,
            format!("`{field}` must be an http:// or https:// URL with a host, got {url:?}"),
        )),
    }
}

pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), FleetError> {
    if labels.len() > 64 {
        return Err(invalid("labels", "at most 64 labels are allowed"));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            return Err(invalid(
                "labels",
                format!(
                    "label key {key:?} is invalid: use 1-63 letters, digits, '-', '_', '.' or '/'"
                ),
            ));
        }
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(invalid(
                "labels",
                format!("label {key:?} has a value longer than 256 characters or with control characters"),
            ));
        }
    }
    Ok(())
}

impl NewNode {
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

impl Registration {
    pub fn validate(&self) -> Result<(), FleetError> {
        check_text("provider", &self.provider, 64)?;
        check_text("region", &self.region, 128)?;
        if let Some(zone) = &self.zone {
            check_text("zone", zone, 128)?;
        }
        check_text("model_name", &self.model_name, 256)?;
        check_endpoint_url("endpoint_url", &self.endpoint_url)?;
        check_text("gpu_type", &self.gpu_type, 64)?;
        check_text("instance_type", &self.instance_type, 128)?;
        if let Some(version) = &self.agent_version {
            check_text("agent_version", version, 64)?;
        }
        if self.gpu_count == Some(0) || self.gpu_count.is_some_and(|n| n > 64) {
            return Err(invalid("gpu_count", "`gpu_count` must be between 1 and 64"));
        }
        if let Some(labels) = &self.labels {
            check_labels(labels)?;
        }
        Ok(())
    }
}

impl HeartbeatReport {
    pub fn validate(&self) -> Result<(), FleetError> {
        if !(0.0..=1.0).contains(&self.health_score) {
            return Err(invalid(
                "health_score",
                format!(
                    "`health_score` must be a number from 0.0 to 1.0, got {}",
                    self.health_score
                ),
            ));
        }
        // Every text is bounded: the report is kept on the node, in memory and in the change
        // feed, for every node.
        if let Some(notice) = &self.spot_interruption {
            check_text("spot_interruption.source", &notice.source, 32)?;
            check_text("spot_interruption.action", &notice.action, 64)?;
            check_optional("spot_interruption.time", notice.time.as_deref(), 64)?;
            check_optional("spot_interruption.detail", notice.detail.as_deref(), 512)?;
        }
        if let Some(server) = &self.model_server {
            check_optional("model_server.error", server.error.as_deref(), 512)?;
            let models = server.models.as_deref().unwrap_or_default();
            if models.len() > 16 {
                return Err(invalid(
                    "model_server.models",
                    "at most 16 models may be reported",
                ));
            }
            for model in models {
                check_optional("model_server.models", Some(model), 256)?;
            }
        }
        if let Some(gpu) = &self.gpu {
            check_optional("gpu.name", gpu.name.as_deref(), 128)?;
        }
        check_optional("agent_version", self.agent_version.as_deref(), 64)?;
        Ok(())
    }

    pub fn model_ready(&self) -> Option<bool> {
        self.model_server.as_ref().map(|m| m.ready)
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

    #[test]
    fn endpoint_urls_need_http_scheme_and_host() {
        assert!(check_endpoint_url("endpoint_url", "http://10.0.0.5:8000").is_ok());
        assert!(check_endpoint_url("endpoint_url", "https://x.example/v1").is_ok());
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http:///x",
            "10.0.0.5:8000",
            "http://a b",
        ] {
            assert!(check_endpoint_url("endpoint_url", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn health_score_outside_unit_interval_is_invalid() {
        let mut hb: HeartbeatReport = serde_json::from_str(r#"{"health_score": 0.5}"#).unwrap();
        assert!(hb.validate().is_ok());
        for bad in [-0.01, 1.01, 7.0] {
            hb.health_score = bad;
            match hb.validate() {
                Err(FleetError::Invalid { field, .. }) => assert_eq!(field, "health_score"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn label_keys_are_restricted() {
        let mut labels = BTreeMap::new();
        labels.insert("team/ml".to_string(), "a".to_string());
        assert!(check_labels(&labels).is_ok());
        labels.insert("bad key".to_string(), "a".to_string());
        assert!(check_labels(&labels).is_err());
    }
}
