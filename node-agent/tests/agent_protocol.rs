//! The real `skylaunch-agent` binary against a scripted stand-in for the control plane, for the
//! answers the real server rarely gives: a 5xx heartbeat, `desired: stop`. Everything listens on
//! 127.0.0.1; the metadata URL points at a closed local port.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::process::Command;

const TOKEN: &str = "agent-protocol-token";

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

/// A model server still loading: `/v1/models` lists nothing for its first `loading_for` answers.
async fn loading_model_server(loading_for: usize) -> SocketAddr {
    let calls = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route(
            "/v1/models",
            get(move || {
                let calls = calls.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < loading_for {
                        Json(json!({"object": "list", "data": []}))
                    } else {
                        Json(json!({"object": "list", "data": [{"id": "slow/model"}]}))
                    }
                }
            }),
        );
    serve(router).await
}

#[derive(Default)]
struct Recorded {
    registrations: Vec<Value>,
    heartbeats: Vec<Value>,
}

type Shared = Arc<Mutex<Recorded>>;

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"))
}

async fn register(
    State(seen): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    assert!(authorized(&headers), "register carries the node token");
    seen.lock().unwrap().registrations.push(body);
    (
        StatusCode::OK,
        Json(
            json!({"status": "registered", "node_id": "n-1", "node_status": "registered",
                    "heartbeat_interval_s": 0.1}),
        ),
    )
}

/// First heartbeat: 503. Second: run. From the third on: stop.
async fn heartbeat(
    State(seen): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    assert_eq!(id, "n-1");
    assert!(authorized(&headers), "heartbeat carries the node token");
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.heartbeats.push(body);
        seen.heartbeats.len()
    };
    match n {
        1 => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": "database_unavailable", "message": "try again"}})),
        ),
        2 => (
            StatusCode::OK,
            Json(
                json!({"node_id": "n-1", "status": "ready", "desired": "run",
                        "heartbeat_interval_s": 0.1}),
            ),
        ),
        _ => (
            StatusCode::OK,
            Json(
                json!({"node_id": "n-1", "status": "ready", "desired": "stop",
                        "heartbeat_interval_s": 0.1}),
            ),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_waits_for_the_model_survives_a_failed_heartbeat_and_obeys_stop() {
    let seen = Shared::default();
    let control_plane = serve(
        Router::new()
            .route("/admin/nodes/register", post(register))
            .route("/admin/nodes/{id}/heartbeat", post(heartbeat))
            .with_state(seen.clone()),
    )
    .await;
    let model_server = loading_model_server(2).await;

    let child = Command::new(env!("CARGO_BIN_EXE_skylaunch-agent"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "SKYLAUNCH_CONTROL_PLANE_URL",
            format!("http://{control_plane}"),
        )
        .env("SKYLAUNCH_NODE_ID", "n-1")
        .env("SKYLAUNCH_NODE_TOKEN", TOKEN)
        .env(
            "SKYLAUNCH_MODEL_SERVER_URL",
            format!("http://{model_server}"),
        )
        .env("SKYLAUNCH_PROVIDER", "byo")
        .env("SKYLAUNCH_IMDS_URL", "http://127.0.0.1:9")
        .env("SKYLAUNCH_NVIDIA_SMI", "/nonexistent/nvidia-smi")
        .env("SKYLAUNCH_REGISTER_MAX_BACKOFF", "100ms")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("agent binary starts");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("agent exits within 20 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("asked node n-1 to stop"), "{stderr}");
    assert!(!stderr.contains(TOKEN), "the token is never printed");

    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.registrations.len(),
        1,
        "registered once, after the model was listed"
    );
    let reg = &seen.registrations[0];
    assert_eq!(reg["model_name"], "slow/model");
    assert_eq!(reg["provider"], "byo");
    assert_eq!(reg["region"], "local");
    assert_eq!(reg["instance_type"], "unknown");
    assert_eq!(reg["gpu_type"], "none");
    assert_eq!(reg["spot_instance"], false);
    assert_eq!(
        reg["endpoint_url"],
        format!("http://127.0.0.1:{}", model_server.port())
    );
    assert_eq!(
        seen.heartbeats.len(),
        3,
        "the 503 did not stop the heartbeats; stop did"
    );
    let hb = &seen.heartbeats[2];
    assert_eq!(hb["model_server"]["ready"], true);
    assert_eq!(hb["model_server"]["models"], json!(["slow/model"]));
    assert_eq!(
        hb["gpu"],
        json!({"present": false, "name": null, "count": null,
        "utilization_pct": null, "memory_used_mib": null, "memory_total_mib": null,
        "temperature_c": null})
    );
    assert_eq!(hb["queue"], Value::Null);
    assert_eq!(hb["spot_interruption"], Value::Null);
    assert_eq!(hb["going_away"], false);
    assert_eq!(hb["health_score"], 1.0);
}
