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
            "/v1/chat/completions",
            axum::routing::post(|| async {
                Json(json!({"object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}))
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

/// Opens `count` connections to `target` from `source` and leaves them idle; those the server
/// refuses or closes at once are dropped.
async fn idle_connections(
    target: SocketAddr,
    source: std::net::Ipv4Addr,
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(2), socket.connect(target)).await
        {
            held.push(stream);
        }
    }
    held
}

/// A slow-header client: sends a request head a few bytes at a time and never finishes it.
/// Returns whether the server closed the connection within `bound`.
async fn trickle(target: SocketAddr, source: std::net::Ipv4Addr, bound: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    let Ok(mut stream) = socket.connect(target).await else {
        return true;
    };
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n";
    let until = tokio::time::Instant::now() + bound;
    let mut sent = 0;
    let mut byte = [0u8; 256];
    while tokio::time::Instant::now() < until {
        let piece: &[u8] = if sent < head.len() {
            &head[sent..(sent + 4).min(head.len())]
        } else {
            b"x-slow: 1\r\n"
        };
        if stream.write_all(piece).await.is_err() {
            return true;
        }
        sent += piece.len();
        // Anything the server says (an error, or the end) closes this client.
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await
        {
            match read {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }
    false
}

/// The `skylaunch_connections_closed_total` count for `reason` in a metrics page.
fn closed(metrics: &str, reason: &str) -> u64 {
    let series = format!("skylaunch_connections_closed_total{{reason=\"{reason}\"}}");
    common::metric_value(metrics, &series).unwrap_or(0.0) as u64
}

/// A script-driven attack on the control plane over 127.0.0.0/8: waves of idle connections from
/// many source addresses, far more than the connection cap, plus clients that trickle request
/// heads. Meanwhile the real agent heartbeats without a miss and a well-behaved client's /v1
/// requests all succeed; the tricklers are closed by the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_floods_and_slow_headers_do_not_stop_heartbeats_or_v1_traffic() {
    let Some(db) = common::TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let mut config = common::test_config(&db);
    config.max_connections = 300;
    config.max_connections_per_source = 100;
    config.agent_connection_reserve = 20;
    config.header_timeout = Duration::from_secs(2);
    config.keepalive_timeout = Duration::from_secs(5);
    let app = TestApp::start(db, config).await;
    let target = app.running.as_ref().unwrap().local_addr();
    let (id, token) = app.create_node("attacked-1").await;
    let (model, _model_server) = fake_model_server().await;
    let agent = Agent::start(&app.base, &id, &token, model, None);
    app.wait_for_status(&id, "ready").await;

    // Slow headers alone first: each trickler is cut off by the header timeout.
    let tricklers: Vec<_> = (0..20u8)
        .map(|n| {
            tokio::spawn(trickle(
                target,
                std::net::Ipv4Addr::new(127, 0, 1, n + 1),
                Duration::from_secs(30),
            ))
        })
        .collect();
    for trickler in tricklers {
        assert!(trickler.await.unwrap(), "a trickling head was closed");
    }
    let metrics = app.metrics().await;
    assert!(
        closed(&metrics, "header_timeout") >= 20,
        "closed by the header timeout: {}",
        closed(&metrics, "header_timeout")
    );

    // Then the flood: 12 waves of 252 idle connections from 10 addresses in turn (3,024 in
    // all, ten times the cap), with tricklers among them.
    let flood = tokio::spawn(async move {
        let mut held: Vec<Vec<tokio::net::TcpStream>> = Vec::new();
        let mut tricklers = Vec::new();
        let mut opened = 0;
        for wave in 0..12u8 {
            let mut trickles = Vec::new();
            for n in 0..5u8 {
                trickles.push(tokio::spawn(trickle(
                    target,
                    std::net::Ipv4Addr::new(127, 0, 3, wave * 5 + n + 1),
                    Duration::from_secs(30),
                )));
            }
            let mut wave_conns = Vec::new();
            for n in 0..3u8 {
                let source = std::net::Ipv4Addr::new(127, 0, 2, (wave * 3 + n) % 10 + 1);
                wave_conns.extend(idle_connections(target, source, 84).await);
            }
            opened += wave_conns.len();
            held.push(wave_conns);
            // Keep the last few waves open; the server decides which to close.
            if held.len() > 4 {
                held.remove(0);
            }
            tricklers.extend(trickles);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for t in tricklers {
            assert!(
                t.await.unwrap(),
                "a trickling head was closed during the flood"
            );
        }
        opened
    });
    // A well-behaved client: one request at a time, each on a new connection.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (mut ok, mut failed) = (0, Vec::new());
    while !flood.is_finished() {
        let answer = client
            .post(app.url("/v1/chat/completions"))
            .json(&json!({"model": "test/model", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == 200 => ok += 1,
            Ok(r) => failed.push(format!(
                "{} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => failed.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opened = flood.await.unwrap();
    let metrics = app.metrics().await;
    let evicted = closed(&metrics, "evicted_at_max_connections");
    let refused = closed(&metrics, "max_connections") + closed(&metrics, "per_source_limit");
    eprintln!(
        "attack: {opened} idle connections opened, {evicted} closed to make room, {refused} refused, {} closed by the header timeout, {} by the keep-alive timeout; /v1: {ok} ok, {} failed",
        closed(&metrics, "header_timeout"),
        closed(&metrics, "idle_timeout"),
        failed.len()
    );
    assert!(evicted + refused > 0, "the flood reached the cap");
    assert!(
        ok > 0 && failed.is_empty(),
        "/v1 requests failed: {failed:?}"
    );

    // The agent never missed a beat: the node stayed ready, and the agent logged no failure.
    let node = app.node(&id).await;
    assert_eq!(node["status"], "ready", "{node}");
    let events = node["events"].to_string();
    assert!(
        !events.contains("unhealthy") && !events.contains("offline"),
        "{events}"
    );
    agent.signal("-TERM");
    let (_, stderr) = agent.exit().await;
    assert!(!stderr.contains("heartbeat failed"), "{stderr}");
}
