//! Test harness: starts the real control plane on 127.0.0.1:0 against a fresh SQLite file or a
//! fresh PostgreSQL schema, with HTTP helpers named after the routes. Shared by the server's and
//! the agent's integration tests (`#[path]`-included there).
#![allow(dead_code)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use skylaunch::app::Running;
use skylaunch::config::{Secret, ServeConfig};
use sqlx::Connection;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend, as `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )*};
}

fn postgres_admin_url() -> String {
    std::env::var("SKYLAUNCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A fresh, empty database for one test; a PostgreSQL schema is dropped when it goes away.
pub struct TestDb {
    pub url: String,
    pub data_dir: tempfile::TempDir,
    schema: Option<String>,
}

impl TestDb {
    /// `None` when PostgreSQL is unreachable outside CI (after a loud message); under `CI=true`
    /// a missing PostgreSQL fails the test.
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let data_dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Some(TestDb {
                url: format!(
                    "sqlite://{}?mode=rwc",
                    data_dir.path().join("test.db").display()
                ),
                data_dir,
                schema: None,
            }),
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = match tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::PgConnection::connect(&admin),
                )
                .await
                {
                    Ok(Ok(conn)) => conn,
                    failure => {
                        let why = match failure {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_string(),
                        };
                        if in_ci() {
                            panic!("PostgreSQL is required under CI=true but {admin} is not reachable: {why}");
                        }
                        eprintln!("\n!!! SKIPPED: PostgreSQL test, {admin} is not reachable ({why}); set SKYLAUNCH_TEST_POSTGRES_URL or start PostgreSQL\n");
                        return None;
                    }
                };
                let schema = format!("sl_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test schema");
                let sep = if admin.contains('?') { '&' } else { '?' };
                Some(TestDb {
                    url: format!("{admin}{sep}options=-c%20search_path%3D{schema}"),
                    data_dir,
                    schema: Some(schema),
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        // Drop runs outside any runtime guarantee, so use a private one on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Settings for tests: health timings of seconds, so silence-driven changes happen within a test.
pub fn test_config(db: &TestDb) -> ServeConfig {
    let mut config = ServeConfig::defaults();
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.data_dir = db.data_dir.path().to_path_buf();
    config.database_url = Some(db.url.clone());
    config.admin_token = Some(Secret(ADMIN_TOKEN.to_string()));
    // Wide enough that a test pausing under CI load does not see its node swept; the sweeper's
    // own test narrows them.
    config.heartbeat_interval = Duration::from_secs(1);
    config.missed_heartbeats = 3;
    config.offline_after = Duration::from_secs(5);
    config.sweep_interval = Duration::from_millis(50);
    config.telemetry_flush_interval = Duration::from_millis(200);
    config.teardown_retry_interval = Duration::from_millis(200);
    config.shutdown_timeout = Duration::from_secs(5);
    config
}

pub struct TestApp {
    pub running: Option<Running>,
    pub base: String,
    pub client: reqwest::Client,
    pub config: ServeConfig,
    pub db: TestDb,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        let db = TestDb::new(backend).await?;
        let config = test_config(&db);
        Some(TestApp::start(db, config).await)
    }

    pub async fn start(db: TestDb, config: ServeConfig) -> TestApp {
        // Server logs appear in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,sqlx=warn")
            .with_test_writer()
            .try_init();
        let running = Running::start(config.clone())
            .await
            .expect("control plane starts");
        TestApp {
            base: running.base_url(),
            running: Some(running),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            config,
            db,
        }
    }

    /// Graceful stop, then a fresh process-equivalent start on the same database.
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// As [`TestApp::restart`], with settings changed for the new start.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
        self.running.take().expect("running").shutdown().await;
        tweak(&mut self.config);
        TestApp::start(self.db, self.config).await
    }

    /// Stop without flushing anything (as `kill -9` would), then start again.
    pub async fn crash_and_restart(self) -> TestApp {
        self.crash_and_restart_with(|_| {}).await
    }

    /// As [`TestApp::crash_and_restart`], with settings changed for the new start.
    pub async fn crash_and_restart_with(mut self, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
        self.running.take().expect("running").abort().await;
        tweak(&mut self.config);
        TestApp::start(self.db, self.config).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("request reaches the server");
        let status = res.status();
        let text = res.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply { status, body }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.client.delete(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

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

/// The value of one series (its name and labels as the page writes them, e.g.
/// `x_total{reason="y"}`) in a `/metrics` page.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

impl TestApp {
    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics body")
    }
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
