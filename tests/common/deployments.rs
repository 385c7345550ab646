//! Deployment helpers: read one, wait for a state of it or of its actions.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::{Reply, TestApp, ADMIN_TOKEN};

impl TestApp {
    pub async fn get_deployment(&self, name: &str) -> Reply {
        self.get(&format!("/admin/deployments/{name}"), Some(ADMIN_TOKEN))
            .await
    }

    /// Polls (up to about 90 s) until `done` holds for the deployment; returns it.
    pub async fn wait_deployment(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        for _ in 0..900 {
            let r = self.get_deployment(name).await;
            last = r.body;
            if r.status == StatusCode::OK && done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("deployment {name} never got {what}; last seen: {last:#}");
    }

    /// The deployment's actions, newest first.
    pub async fn deployment_actions(&self, name: &str) -> Vec<Value> {
        let r = self
            .get(
                &format!("/admin/deployments/{name}/actions"),
                Some(ADMIN_TOKEN),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["actions"].as_array().unwrap().clone()
    }

    /// Polls (up to about 90 s) until `done` holds for the deployment's actions; returns them.
    pub async fn wait_actions(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut last = Vec::new();
        for _ in 0..900 {
            last = self.deployment_actions(name).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the actions of {name} never showed {what}: {last:#?}");
    }
}

/// Clients sending `/v1` chat requests for one model, one after another, until stopped.
pub struct ChatLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, usize)>,
}

impl ChatLoad {
    /// Stops sending; returns how many requests were answered 200 and how many were not.
    pub async fn stop(self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

impl TestApp {
    /// Creates a deployment; its body as answered (201).
    pub async fn create_deployment(&self, spec: &Value) -> Value {
        let r = self
            .post("/admin/deployments", Some(ADMIN_TOKEN), spec)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body
    }

    /// Scales a deployment; its body as answered (200).
    pub async fn scale_deployment(&self, name: &str, replicas: u32) -> Value {
        let r = self
            .post(
                &format!("/admin/deployments/{name}/scale"),
                Some(ADMIN_TOKEN),
                &serde_json::json!({ "replicas": replicas }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }

    /// Starts sending chat requests for `model` until [`ChatLoad::stop`].
    pub fn chat_load(&self, model: &str) -> ChatLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client, url) = (self.client.clone(), self.url("/v1/chat/completions"));
        let body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": "x"}]});
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == StatusCode::OK => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        });
        ChatLoad { stop, task }
    }
}

/// The node ids of a deployment's view, in its order.
pub fn node_ids(d: &serde_json::Value) -> Vec<String> {
    d["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_string())
        .collect()
}
