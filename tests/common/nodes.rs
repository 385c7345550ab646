//! Nodes as a test drives them: created, registered and heartbeating like an agent, drained
//! and deleted like an admin, and waited on until the health model moves them.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{Reply, TestApp, ADMIN_TOKEN};

impl TestApp {
    /// Creates a bring-your-own node on this machine; returns (id, token).
    pub async fn create_node(&self, name: &str) -> (String, String) {
        self.create_node_from(
            &json!({"name": name, "model_name": "test/model", "provider": "local"}),
        )
        .await
    }

    /// Creates a node from `body` (`POST /admin/nodes`); returns (id, token).
    pub async fn create_node_from(&self, body: &Value) -> (String, String) {
        let r = self.post("/admin/nodes", Some(ADMIN_TOKEN), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        (
            r.body["node_id"].as_str().expect("node_id").to_string(),
            r.body["token"].as_str().expect("token").to_string(),
        )
    }

    /// Drains the node, as an admin would.
    pub async fn drain(&self, id: &str) -> Reply {
        self.post(
            &format!("/admin/nodes/{id}/drain"),
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await
    }

    /// Deletes the node, as an admin would.
    pub async fn delete_node(&self, id: &str) -> Reply {
        self.delete(&format!("/admin/nodes/{id}"), Some(ADMIN_TOKEN))
            .await
    }

    pub async fn register(&self, id: &str, token: &str) -> Reply {
        self.post(
            &format!("/admin/nodes/register?node_id={id}"),
            Some(token),
            &registration(),
        )
        .await
    }

    pub async fn heartbeat(&self, id: &str, token: &str, body: &Value) -> Reply {
        self.post(&format!("/admin/nodes/{id}/heartbeat"), Some(token), body)
            .await
    }

    pub async fn node(&self, id: &str) -> Value {
        let r = self
            .get(&format!("/admin/nodes/{id}"), Some(ADMIN_TOKEN))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }

    /// Polls (bounded) until the node has `status`; returns the node.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..400 {
            last = self.node(id).await;
            if last["status"] == status {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {id} never reached status {status}; last seen: {last}");
    }

    /// A node that has registered and sent one healthy heartbeat.
    pub async fn ready_node(&self, name: &str) -> (String, String) {
        let (id, token) = self.create_node(name).await;
        assert_eq!(self.register(&id, &token).await.status, StatusCode::OK);
        let r = self.heartbeat(&id, &token, &healthy()).await;
        assert_eq!(r.body["status"], "ready", "{}", r.body);
        (id, token)
    }
}

pub fn registration() -> Value {
    json!({
        "provider": "aws", "region": "us-east-1", "zone": "us-east-1a",
        "model_name": "test/model", "endpoint_url": "http://127.0.0.1:8000",
        "gpu_type": "L4", "instance_type": "g6.xlarge", "spot_instance": true,
        "gpu_count": 1, "agent_version": "0.1.0"
    })
}

pub fn healthy() -> Value {
    json!({"health_score": 0.95, "model_server": {"ready": true, "probe_latency_ms": 3.0}})
}
