//! The cloud side of a test: moto's EC2 server as the AWS endpoint, and the orphan sweeper's
//! cloud events.

use std::time::Duration;

use serde_json::Value;

use super::{in_ci, TestApp, ADMIN_TOKEN};

/// moto's EC2 server from the test venv, on a free loopback port; stopped when dropped. `None`
/// outside CI when the venv lacks moto (after a loud message); under CI=true that fails.
pub struct Moto {
    child: std::process::Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn moto() -> Option<Moto> {
    let server = std::env::var_os("SKYLAUNCH_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .map(|p| p.with_file_name("moto_server"))
        .filter(|p| p.is_file());
    let Some(server) = server else {
        let why = "the test venv has no moto_server (scripts/test installs moto[server])";
        if in_ci() {
            panic!("moto is required under CI=true: {why}");
        }
        eprintln!("\n!!! SKIPPED: AWS test: {why}\n");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if reqwest::get(format!("{}/moto-api/", moto.url))
            .await
            .is_ok()
        {
            return Some(moto);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto_server did not start on {}", moto.url);
}

impl TestApp {
    /// Waits (bounded) until the node whose instance vanished is marked terminated, saying so,
    /// and the orphan sweeper recorded it as a cloud event.
    pub async fn wait_for_vanished(&self, node_id: &str, instance_id: &str) {
        let node = self.wait_for_status(node_id, "terminated").await;
        assert!(
            node["status_reason"]
                .as_str()
                .unwrap_or_default()
                .contains("no longer exists"),
            "{node:#}"
        );
        let vanished = self
            .wait_for_cloud_event("instance_vanished", instance_id)
            .await;
        assert_eq!(vanished["node_id"], node_id);
    }

    /// Polls (bounded) until the orphan sweeper has recorded an event of `kind` for
    /// `instance_id`; returns it.
    pub async fn wait_for_cloud_event(&self, kind: &str, instance_id: &str) -> Value {
        let mut last = Vec::new();
        for _ in 0..200 {
            last = self.cloud_events_for(instance_id).await;
            if let Some(event) = last.iter().find(|e| e["kind"] == kind) {
                return event.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {kind} cloud event for {instance_id}; its events: {last:#?}");
    }

    /// The cloud events recorded about one instance, newest first.
    pub async fn cloud_events_for(&self, instance_id: &str) -> Vec<Value> {
        let page = self
            .get("/admin/cloud-events?limit=1000", Some(ADMIN_TOKEN))
            .await
            .body;
        page["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["instance_id"] == instance_id)
            .cloned()
            .collect()
    }

    /// This control plane's installation id, as it tags its cloud resources.
    pub fn installation_id(&self) -> String {
        self.running
            .as_ref()
            .expect("running")
            .installation_id()
            .to_string()
    }
}
