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
