//! The real `skylaunch-agent` binary against the real control plane. Small local HTTP servers
//! stand in for the model server (vLLM's `/health`, `/v1/models`, `/metrics`) and for the cloud's
//! instance metadata service (AWS IMDSv2), all on 127.0.0.1.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use common::{Backend, TestApp, ADMIN_TOKEN};
use serde_json::json;
use tokio::process::{Child, Command};

/// Starts a router on 127.0.0.1:0; the returned handle stops it when aborted.
async fn serve(router: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (addr, handle)
}

/// A stand-in for vLLM serving `test/model`.
async fn fake_model_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let router = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({"object": "list", "data": [{"id": "test/model", "object": "model"}]}))
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                "# HELP vllm:num_requests_running Number of requests running.\n\
                 # TYPE vllm:num_requests_running gauge\n\
                 vllm:num_requests_running{model_name=\"test/model\"} 2.0\n\
                 vllm:num_requests_waiting{model_name=\"test/model\"} 0.0\n\
                 vllm:gpu_cache_usage_perc{model_name=\"test/model\"} 0.31\n"
            }),
        );
    serve(router).await
}

/// A stand-in for AWS IMDSv2; `notice` switches the spot instance-action on.
async fn fake_imds(notice: Arc<AtomicBool>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    async fn instance_action(
        State(notice): State<Arc<AtomicBool>>,
    ) -> Result<Json<serde_json::Value>, StatusCode> {
        if notice.load(Ordering::SeqCst) {
            Ok(Json(
                json!({"action": "terminate", "time": "2026-11-22T21:00:00Z"}),
            ))
        } else {
            Err(StatusCode::NOT_FOUND)
        }
    }
    let router = Router::new()
        .route("/latest/api/token", put(|| async { "imds-session-token" }))
        .route(
            "/latest/meta-data/placement/region",
            get(|| async { "us-east-1" }),
        )
        .route(
            "/latest/meta-data/placement/availability-zone",
            get(|| async { "us-east-1a" }),
        )
        .route(
            "/latest/meta-data/instance-type",
            get(|| async { "g6.xlarge" }),
        )
        .route(
            "/latest/meta-data/instance-life-cycle",
            get(|| async { "spot" }),
        )
        .route(
            "/latest/meta-data/local-ipv4",
            get(|| async { "127.0.0.1" }),
        )
        .route(
            "/latest/meta-data/spot/instance-action",
            get(instance_action),
        )
        .with_state(notice);
    serve(router).await
}

struct Agent {
    child: Child,
}

impl Agent {
    fn start(
        control_plane: &str,
        id: &str,
        token: &str,
        model_server: SocketAddr,
        imds: Option<SocketAddr>,
    ) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skylaunch-agent"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SKYLAUNCH_CONTROL_PLANE_URL", control_plane)
            .env("SKYLAUNCH_NODE_ID", id)
            .env("SKYLAUNCH_NODE_TOKEN", token)
            .env(
                "SKYLAUNCH_MODEL_SERVER_URL",
                format!("http://{model_server}"),
            )
            .env("SKYLAUNCH_NVIDIA_SMI", "/nonexistent/nvidia-smi")
            .env("SKYLAUNCH_SPOT_POLL_INTERVAL", "100ms")
            .env("SKYLAUNCH_REGISTER_MAX_BACKOFF", "200ms")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match imds {
            Some(imds) => {
                cmd.env("SKYLAUNCH_PROVIDER", "aws")
                    .env("SKYLAUNCH_IMDS_URL", format!("http://{imds}"));
            }
            None => {
                // Never let discovery reach for a real metadata address from a test.
                cmd.env("SKYLAUNCH_PROVIDER", "local")
                    .env("SKYLAUNCH_IMDS_URL", "http://127.0.0.1:9")
                    .env("SKYLAUNCH_REGION", "local")
                    .env("SKYLAUNCH_INSTANCE_TYPE", "test-host");
            }
        }
        Agent {
            child: cmd.spawn().expect("agent binary starts"),
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("agent is running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the agent to exit; returns its exit code and stderr.
    async fn exit(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("agent exits within 20 s")
            .expect("wait");
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = err.read_to_string(&mut stderr).await;
        }
        (status.code(), stderr)
    }
}

macro_rules! app {
    () => {
        match TestApp::spawn(Backend::Sqlite).await {
            Some(app) => app,
            None => return,
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_node_becomes_ready_then_unhealthy_when_model_server_stops() {
    let app = app!();
    let (id, token) = app.create_node("agent-1").await;
    let (model, model_server) = fake_model_server().await;
    let agent = Agent::start(&app.base, &id, &token, model, None);
    let node = app.wait_for_status(&id, "ready").await;
    assert_eq!(
        node["endpoint_url"],
        format!("http://127.0.0.1:{}", model.port())
    );
    assert_eq!(node["model_name"], "test/model");
    assert_eq!(
        node["gpu_type"], "none",
        "no GPU is reported as none, not a failure"
    );
    assert_eq!(node["last_heartbeat"]["gpu"]["present"], false);
    assert_eq!(node["last_heartbeat"]["queue"]["running"], 2.0);
    assert!(node["health_score"].as_f64().unwrap() >= 0.5, "{node}");
    model_server.abort();
    let node = app.wait_for_status(&id, "unhealthy").await;
    assert_eq!(node["status_reason"], "model server not ready");
    assert_eq!(node["health_score"], 0.0);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_interruption_notice_from_imds_drains_node() {
    let app = app!();
    let (id, token) = app.create_node("spot-1").await;
    let (model, _model_server) = fake_model_server().await;
    let notice = Arc::new(AtomicBool::new(false));
    let (imds, _imds) = fake_imds(notice.clone()).await;
    let agent = Agent::start(&app.base, &id, &token, model, Some(imds));
    let node = app.wait_for_status(&id, "ready").await;
    assert_eq!(node["provider"], "aws");
    assert_eq!(node["region"], "us-east-1");
    assert_eq!(node["zone"], "us-east-1a");
    assert_eq!(node["instance_type"], "g6.xlarge");
    assert_eq!(node["spot_instance"], true);
    notice.store(true, Ordering::SeqCst);
    let node = app.wait_for_status(&id, "draining").await;
    let reason = node["status_reason"].as_str().unwrap();
    assert!(
        reason.contains("spot interruption notice (aws: terminate at 2026-11-22T21:00:00Z)"),
        "{reason}"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_leaves_node_offline() {
    let app = app!();
    let (id, token) = app.create_node("kill-1").await;
    let (model, _model_server) = fake_model_server().await;
    let agent = Agent::start(&app.base, &id, &token, model, None);
    app.wait_for_status(&id, "ready").await;
    agent.signal("-KILL");
    let _ = agent.exit().await;
    let node = app.wait_for_status(&id, "offline").await;
    assert!(node["status_reason"]
        .as_str()
        .unwrap()
        .starts_with("no heartbeat for"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_a_last_going_away_heartbeat_and_exits_cleanly() {
    let app = app!();
    let (id, token) = app.create_node("term-1").await;
    let (model, _model_server) = fake_model_server().await;
    let agent = Agent::start(&app.base, &id, &token, model, None);
    app.wait_for_status(&id, "ready").await;
    agent.signal("-TERM");
    let (code, stderr) = agent.exit().await;
    assert_eq!(code, Some(0), "{stderr}");
    let node = app.node(&id).await;
    assert_eq!(
        node["status"], "offline",
        "offline at once, not after the silence window"
    );
    assert_eq!(node["status_reason"], "agent is shutting down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_makes_the_agent_exit_with_a_clear_message() {
    let app = app!();
    let (id, _) = app.create_node("wrong-1").await;
    let (model, _model_server) = fake_model_server().await;
    let agent = Agent::start(&app.base, &id, "not-the-right-token", model, None);
    let (code, stderr) = agent.exit().await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("SKYLAUNCH_NODE_TOKEN"), "{stderr}");
    assert!(
        !stderr.contains("not-the-right-token"),
        "the token is never printed"
    );
    assert_eq!(app.node(&id).await["status"], "launching");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_node_makes_the_agent_stop() {
    let app = app!();
    let (id, token) = app.create_node("del-1").await;
    let (model, _model_server) = fake_model_server().await;
    let agent = Agent::start(&app.base, &id, &token, model, None);
    app.wait_for_status(&id, "ready").await;
    let r = app
        .delete(&format!("/admin/nodes/{id}"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, reqwest::StatusCode::OK);
    let (code, stderr) = agent.exit().await;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("no longer exists"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_retrying_registration_until_the_control_plane_is_up() {
    let Some(db) = common::TestDb::new(Backend::Sqlite).await else {
        return;
    };
    // Reserve a free port, then release it for the control plane to take later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = common::test_config(&db);
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    // Create the node first, then stop the control plane before the agent starts.
    let app = TestApp::start(db, config).await;
    let (id, token) = app.create_node("late-1").await;
    let db = {
        let mut app = app;
        app.running.take().unwrap().shutdown().await;
        app.db
    };
    let (model, _model_server) = fake_model_server().await;
    let agent = Agent::start(
        &format!("http://127.0.0.1:{port}"),
        &id,
        &token,
        model,
        None,
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut config = common::test_config(&db);
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let app = TestApp::start(db, config).await;
    app.wait_for_status(&id, "ready").await;
    drop(agent);
}
