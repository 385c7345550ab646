//! The control plane's two agent endpoints, and how their answers are classified: accepted,
//! fatal for this agent (wrong token, node deleted), or worth retrying.

use std::time::Duration;

use serde_json::Value;
use skylaunch_protocol::{error_chain, AgentAck, HeartbeatReport, Registration};

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

    pub async fn register(&self, body: &Registration) -> Result<AgentAck, CallError> {
        let url = format!("{}/admin/nodes/register", self.base);
        let req = self
            .http
            .post(url)
            .query(&[("node_id", &self.node_id)])
            .json(body);
        self.call(req).await
    }

    pub async fn heartbeat(&self, body: &HeartbeatReport) -> Result<AgentAck, CallError> {
        let url = format!("{}/admin/nodes/{}/heartbeat", self.base, self.node_id);
        self.call(self.http.post(url).json(body)).await
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<AgentAck, CallError> {
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
