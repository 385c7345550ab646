//! The control plane's two agent endpoints, and how their answers are classified: accepted,
//! fatal for this agent (wrong token, node deleted), or worth retrying.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the control plane rejected this node's token (HTTP {0})")]
    Unauthorized(u16),
    #[error("the node no longer exists on the control plane")]
    Gone,
    #[error("the node is not registered")]
    NotRegistered,
    #[error("the control plane refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("{0}")]
    Transient(String),
}

impl CallError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Transient(_))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub provider: String,
    pub region: String,
    pub zone: Option<String>,
    pub model_name: String,
    pub endpoint_url: String,
    pub gpu_type: String,
    pub instance_type: String,
    pub spot_instance: bool,
    pub gpu_count: Option<u32>,
    pub agent_version: String,
    pub labels: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Ack {
    #[serde(default)]
    pub desired: Option<String>,
    pub heartbeat_interval_s: f64,
}

impl Ack {
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval_s.clamp(0.05, 3600.0))
    }
}

pub struct ControlPlane {
    http: reqwest::Client,
    base: String,
    node_id: String,
    token: String,
}

impl ControlPlane {
    pub fn new(base: &str, node_id: &str, token: &str) -> Result<ControlPlane, reqwest::Error> {
        Ok(ControlPlane {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(5))
                .user_agent(concat!("skylaunch-agent/", env!("CARGO_PKG_VERSION")))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            node_id: node_id.to_string(),
            token: token.to_string(),
        })
    }

    pub async fn register(&self, body: &Registration) -> Result<Ack, CallError> {
        let url = format!("{}/admin/nodes/register", self.base);
        let req = self
            .http
            .post(url)
            .query(&[("node_id", &self.node_id)])
            .json(body);
        self.call(req).await
    }

    pub async fn heartbeat(&self, body: &Value) -> Result<Ack, CallError> {
        let url = format!("{}/admin/nodes/{}/heartbeat", self.base, self.node_id);
        self.call(self.http.post(url).json(body)).await
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Ack, CallError> {
        let res = req.bearer_auth(&self.token).send().await.map_err(|e| {
            CallError::Transient(format!(
                "cannot reach the control plane: {}",
                error_chain(&e)
            ))
        })?;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or("").to_string();
        match status {
            200..=299 => serde_json::from_value(body).map_err(|e| {
                CallError::Transient(format!("unexpected answer from the control plane: {e}"))
            }),
            401 | 403 => Err(CallError::Unauthorized(status)),
            404 => Err(CallError::Gone),
            409 if body["error"]["code"] == "not_registered" => Err(CallError::NotRegistered),
            408 | 429 | 500..=599 => Err(CallError::Transient(format!(
                "control plane answered HTTP {status} {message}"
            ))),
            _ => Err(CallError::Rejected { status, message }),
        }
    }
}

/// The error and its causes in one line (reqwest hides the useful part in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
