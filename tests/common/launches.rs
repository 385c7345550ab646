//! Launch jobs as a test drives them: queued, cancelled, followed through their log and
//! waited on until they end; and the SkyPilot venv the launch tests need.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{in_ci, Reply, TestApp, ADMIN_TOKEN};

/// The Python interpreter of the test venv that has `skypilot==0.14.1` (set by scripts/test as
/// SKYLAUNCH_TEST_PYTHON). `None` outside CI when it is missing (after a loud message); under
/// CI=true a missing venv fails the test.
pub fn sky_python() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("SKYLAUNCH_TEST_PYTHON").map(std::path::PathBuf::from);
    let usable = path.as_ref().is_some_and(|p| {
        std::process::Command::new(p)
            .args(["-c", "import sky"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if usable {
        return path;
    }
    let why = "SKYLAUNCH_TEST_PYTHON does not point at a Python with skypilot installed (scripts/test sets it up)";
    if in_ci() {
        panic!("the real SkyPilot is required under CI=true: {why}");
    }
    eprintln!("\n!!! SKIPPED: SkyPilot test: {why}\n");
    None
}

/// Whether a launch job has ended.
pub fn job_finished(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

impl TestApp {
    /// Queues a launch job; returns the job as answered (202).
    pub async fn launch(&self, body: &Value) -> Value {
        let r = self
            .post("/admin/launch-jobs", Some(ADMIN_TOKEN), body)
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        assert_eq!(r.body["status"], "queued");
        r.body
    }

    /// Asks for a launch job to be cancelled.
    pub async fn cancel(&self, job_id: &str) -> Reply {
        self.post(
            &format!("/admin/launch-jobs/{job_id}/cancel"),
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await
    }

    /// Queues a launch job; returns its id.
    pub async fn launch_id(&self, body: &Value) -> String {
        self.launch(body).await["id"]
            .as_str()
            .expect("job id")
            .to_string()
    }

    /// Polls (about 40 s at most) until `done` holds for the job; returns it.
    pub async fn wait_for_job(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_job_within(id, Duration::from_secs(40), done)
            .await
    }

    /// The job's log as the plain-text page shows it.
    pub async fn job_log_text(&self, id: &str) -> String {
        self.client
            .get(self.url(&format!("/admin/launch-jobs/{id}/logs")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("log answer")
            .text()
            .await
            .expect("log body")
    }

    /// The job's log lines as JSON text.
    pub async fn job_logs(&self, id: &str) -> String {
        self.get(
            &format!("/admin/launch-jobs/{id}/logs?format=json"),
            Some(ADMIN_TOKEN),
        )
        .await
        .body
        .to_string()
    }

    /// Waits for a launch taken over while its machine was coming up: it ends ready, and the log
    /// says the new process waited for that machine's agent instead of launching again.
    pub async fn wait_for_followed_launch(&self, id: &str) -> Value {
        let done = self.wait_for_job(id, job_finished).await;
        assert_eq!(done["status"], "succeeded", "{done:#}");
        let logs = self.job_logs(id).await;
        assert!(
            logs.contains("waiting for its agent to register instead of launching again"),
            "{logs}"
        );
        done
    }

    /// Polls the job's log until it contains `needle` (at most 20 s); returns it.
    pub async fn wait_for_log(&self, id: &str, needle: &str) -> String {
        let mut logs = String::new();
        for _ in 0..200 {
            logs = self.job_logs(id).await;
            if logs.contains(needle) {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the log of job {id} never said {needle:?}: {logs}");
    }

    /// Polls until `done` holds for the job, for at most `budget`; returns it.
    pub async fn wait_for_job_within(
        &self,
        id: &str,
        budget: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        for _ in 0..(budget.as_millis() / 100).max(1) {
            last = self
                .get(&format!("/admin/launch-jobs/{id}"), Some(ADMIN_TOKEN))
                .await
                .body;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {id} never got there; last: {last:#}");
    }
}
