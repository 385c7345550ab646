//! The body of an agent's heartbeat and the measurements it carries. (`///` comments on these
//! types become descriptions in the control plane's `/openapi.json`; notes meant only for
//! readers of the code are `//`.)
//!
//! The control plane keeps the latest report on the node as it was sent and shows it in the API
//! (`last_heartbeat`), so these types are serialised with every field, `null` included.

use serde::{Deserialize, Serialize};

/// `POST /admin/nodes/<id>/heartbeat`. Unknown fields are ignored so newer agents keep working.
// The last heartbeat of an agent that is stopping carries `going_away: true`, a zero score and no
// measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatReport {
    // 0.0 to 1.0; see `skylaunch-agent`'s score module for how it is computed.
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

impl HeartbeatReport {
    /// Whether the model server answered its readiness probe; `None` when the report has no
    /// model server section.
    pub fn model_ready(&self) -> Option<bool> {
        self.model_server.as_ref().map(|m| m.ready)
    }
}

// The readiness probe of the local model server: ready only when `/health` answers and
// `/v1/models` lists the node's model; `error` says why not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelServerReport {
    pub ready: bool,
    #[serde(default)]
    pub probe_latency_ms: Option<f64>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub error: Option<String>,
}

// What `nvidia-smi` reports, over all GPUs of the machine: the first GPU's name, the mean
// utilisation, the memory summed, the hottest GPU's temperature. A machine without a GPU (or
// without the tool) reports `present: false` and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

impl GpuReport {
    /// No GPU, or none that `nvidia-smi` could report on.
    pub fn absent() -> GpuReport {
        GpuReport {
            present: false,
            name: None,
            count: None,
            utilization_pct: None,
            memory_used_mib: None,
            memory_total_mib: None,
            temperature_c: None,
        }
    }

    /// The short type name the control plane uses: "NVIDIA L4" → "L4".
    pub fn short_type(&self) -> Option<String> {
        let name = self.name.as_deref()?;
        let name = name.strip_prefix("NVIDIA ").unwrap_or(name);
        let name = name.strip_prefix("Tesla ").unwrap_or(name);
        name.split_whitespace().next().map(str::to_string)
    }
}

// vLLM's queue, from its `/metrics`: requests running and waiting (summed over engines), and the
// fullest KV cache (0.0 to 1.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueReport {
    #[serde(default)]
    pub running: Option<f64>,
    #[serde(default)]
    pub waiting: Option<f64>,
    #[serde(default)]
    pub kv_cache_usage: Option<f64>,
}

// A spot interruption notice: `source` is the cloud (`aws`, `azure`), `action` what it will do
// (`terminate`, `stop`, `preempt`, ...), `time` when, as the cloud wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpotNotice {
    pub source: String,
    pub action: String,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

impl SpotNotice {
    /// One line for a status reason or an event: "aws: terminate at 2026-11-22T20:00:00Z".
    pub fn describe(&self) -> String {
        match &self.time {
            Some(time) => format!("{}: {} at {}", self.source, self.action, time),
            None => format!("{}: {}", self.source, self.action),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_report_is_accepted_and_unknown_fields_are_ignored() {
        let hb: HeartbeatReport = serde_json::from_str(
            r#"{"health_score": 0.5, "from_a_newer_agent": 1, "model_server": {"ready": true, "x": 2}}"#,
        )
        .unwrap();
        assert_eq!(hb.health_score, 0.5);
        assert_eq!(hb.model_ready(), Some(true));
        assert!(hb.gpu.is_none() && hb.queue.is_none() && hb.spot_interruption.is_none());
        assert!(!hb.going_away);
    }

    #[test]
    fn every_field_is_serialised_nulls_included() {
        let hb = HeartbeatReport {
            health_score: 1.0,
            model_server: None,
            gpu: Some(GpuReport::absent()),
            queue: None,
            spot_interruption: None,
            going_away: false,
            agent_version: Some("0.1.0".into()),
        };
        assert_eq!(
            serde_json::to_string(&hb).unwrap(),
            r#"{"health_score":1.0,"model_server":null,"gpu":{"present":false,"name":null,"count":null,"utilization_pct":null,"memory_used_mib":null,"memory_total_mib":null,"temperature_c":null},"queue":null,"spot_interruption":null,"going_away":false,"agent_version":"0.1.0"}"#
        );
    }

    #[test]
    fn gpu_short_type_drops_the_vendor() {
        let gpu = |name: &str| GpuReport {
            present: true,
            name: Some(name.into()),
            ..GpuReport::absent()
        };
        assert_eq!(gpu("NVIDIA L4").short_type().as_deref(), Some("L4"));
        assert_eq!(gpu("Tesla T4").short_type().as_deref(), Some("T4"));
        assert_eq!(
            gpu("NVIDIA H100 80GB HBM3").short_type().as_deref(),
            Some("H100")
        );
        assert_eq!(GpuReport::absent().short_type(), None);
    }

    #[test]
    fn spot_notices_describe_themselves() {
        let mut n = SpotNotice {
            source: "aws".into(),
            action: "terminate".into(),
            time: Some("2026-11-22T20:00:00Z".into()),
            detail: None,
        };
        assert_eq!(n.describe(), "aws: terminate at 2026-11-22T20:00:00Z");
        n.time = None;
        assert_eq!(n.describe(), "aws: terminate");
    }
}
