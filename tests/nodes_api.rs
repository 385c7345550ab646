//! The node registry's HTTP contract, on SQLite and PostgreSQL: auth matrix, validation (bad
//! input changes nothing), registration, heartbeats, admin actions, the sweeper, and restarts.

mod common;

use std::time::Duration;

use common::{healthy, registration, Backend, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

macro_rules! app {
    ($backend:expr) => {
        match TestApp::spawn($backend).await {
            Some(app) => app,
            None => return,
        }
    };
}

async fn event_count(app: &TestApp, id: &str) -> usize {
    app.node(id).await["events"]
        .as_array()
        .expect("events")
        .len()
}

async fn created_node_has_one_time_token_and_waits_for_agent(backend: Backend) {
    let app = app!(backend);
    let r = app
        .post(
            "/admin/nodes",
            Some(ADMIN_TOKEN),
            &json!({"name": "byo-1", "model_name": "m/x", "labels": {"team": "ml"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = r.body["token"].as_str().unwrap();
    assert!(token.len() >= 32, "token has at least 128 bits");
    assert_eq!(r.body["status"], "launching");
    assert_eq!(r.body["provider"], "byo");
    assert_eq!(r.body["agent_env"]["SKYLAUNCH_NODE_ID"], r.body["node_id"]);
    let id = r.body["node_id"].as_str().unwrap();
    let shown = app.node(id).await;
    assert!(
        !shown.to_string().contains(token),
        "token is shown only once"
    );
    let list = app.get("/admin/nodes", Some(ADMIN_TOKEN)).await;
    assert!(!list.body.to_string().contains(token));
    let node = &list.body["nodes"][0];
    for field in [
        "id",
        "name",
        "status",
        "model_name",
        "endpoint_url",
        "provider",
        "region",
        "gpu_type",
        "instance_type",
        "spot_instance",
        "health_score",
        "last_heartbeat_at",
        "launch_job_id",
    ] {
        assert!(
            node.get(field).is_some(),
            "node list entry lacks {field}: {node}"
        );
    }
}

async fn duplicate_live_name_conflicts(backend: Backend) {
    let app = app!(backend);
    app.create_node("dup").await;
    let r = app
        .post(
            "/admin/nodes",
            Some(ADMIN_TOKEN),
            &json!({"name": "dup", "model_name": "m"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.error_code(), "name_taken");
}

async fn name_of_terminated_node_can_be_reused(backend: Backend) {
    let app = app!(backend);
    let (id, _) = app.create_node("reuse").await;
    assert_eq!(app.delete_node(&id).await.status, StatusCode::OK);
    app.create_node("reuse").await;
}

async fn invalid_new_node_is_422_and_creates_nothing(backend: Backend) {
    let app = app!(backend);
    for (body, field) in [
        (
            json!({"name": "bad name; rm -rf /", "model_name": "m"}),
            "name",
        ),
        (json!({"name": "ok", "model_name": ""}), "model_name"),
        (
            json!({"name": "ok", "model_name": "m", "endpoint_url": "ftp://x"}),
            "endpoint_url",
        ),
        (json!({"model_name": "m"}), "name"),
        (
            json!({"name": "ok", "model_name": "m", "surprise": 1}),
            "surprise",
        ),
    ] {
        let r = app.post("/admin/nodes", Some(ADMIN_TOKEN), &body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        assert_eq!(r.body["error"]["field"], field, "{}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().len() > 10);
    }
    let list = app.get("/admin/nodes", Some(ADMIN_TOKEN)).await;
    assert_eq!(list.body["nodes"], json!([]));
}

async fn admin_endpoints_need_the_admin_token(backend: Backend) {
    let app = app!(backend);
    let (id, node_token) = app.create_node("n").await;
    for token in [None, Some("wrong-token"), Some(node_token.as_str())] {
        let r = app.get("/admin/nodes", token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "token {token:?}");
        assert_eq!(r.error_code(), "unauthorized");
        let r = app
            .post(&format!("/admin/nodes/{id}/drain"), token, &json!({}))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = app.delete(&format!("/admin/nodes/{id}"), token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.node(&id).await["status"],
        "launching",
        "nothing changed"
    );
    let r = app
        .send(
            app.client
                .get(app.url("/admin/nodes"))
                .header("X-Admin-Token", ADMIN_TOKEN),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "X-Admin-Token is accepted");
}

async fn agent_endpoints_refuse_the_admin_token(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.create_node("n").await;
    let r = app
        .post(
            &format!("/admin/nodes/register?node_id={id}"),
            Some(ADMIN_TOKEN),
            &registration(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.register(&id, &token).await.status, StatusCode::OK);
    let r = app.heartbeat(&id, ADMIN_TOKEN, &healthy()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app
        .post(&format!("/admin/nodes/{id}/heartbeat"), None, &healthy())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.node(&id).await["status"], "registered");
}

async fn heartbeat_with_other_nodes_token_is_rejected(backend: Backend) {
    let app = app!(backend);
    let (a, a_token) = app.ready_node("a").await;
    let (b, b_token) = app.create_node("b").await;
    assert_eq!(app.register(&b, &b_token).await.status, StatusCode::OK);
    let r = app.heartbeat(&b, &a_token, &healthy()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app
        .post(
            &format!("/admin/nodes/register?node_id={b}"),
            Some(&a_token),
            &registration(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.node(&b).await["status"], "registered", "b unchanged");
    assert_eq!(app.node(&a).await["status"], "ready", "a unchanged");
}

async fn register_unknown_node_is_404(backend: Backend) {
    let app = app!(backend);
    let (_, token) = app.create_node("n").await;
    let r = app
        .post(
            "/admin/nodes/register?node_id=no-such-node",
            Some(&token),
            &registration(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "node_not_found");
    let r = app
        .post("/admin/nodes/register", Some(&token), &registration())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code(), "missing_node_id");
}

async fn malformed_registration_names_the_field_and_changes_nothing(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.create_node("n").await;
    let before = event_count(&app, &id).await;
    let mut missing = registration();
    missing.as_object_mut().unwrap().remove("endpoint_url");
    let mut wrong_type = registration();
    wrong_type["spot_instance"] = json!("yes");
    let mut bad_url = registration();
    bad_url["endpoint_url"] = json!("not a url");
    for (body, field) in [
        (missing, "endpoint_url"),
        (wrong_type, "spot_instance"),
        (bad_url, "endpoint_url"),
    ] {
        let r = app
            .post(
                &format!("/admin/nodes/register?node_id={id}"),
                Some(&token),
                &body,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{}", r.body);
    }
    let node = app.node(&id).await;
    assert_eq!(node["status"], "launching");
    assert_eq!(node["endpoint_url"], Value::Null);
    assert_eq!(event_count(&app, &id).await, before);
}

async fn registering_again_is_idempotent(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.create_node("n").await;
    let first = app.register(&id, &token).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["status"], "registered");
    assert_eq!(first.body["node_id"], id);
    assert_eq!(first.body["heartbeat_interval_s"], 1.0);
    let events = event_count(&app, &id).await;
    let second = app.register(&id, &token).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body["node_status"], "registered");
    assert_eq!(event_count(&app, &id).await, events, "no duplicate event");
    let node = app.node(&id).await;
    assert_eq!(node["gpu_type"], "L4");
    assert_eq!(node["region"], "us-east-1");
    assert_eq!(node["spot_instance"], true);
    assert_eq!(
        app.get("/admin/nodes", Some(ADMIN_TOKEN)).await.body["nodes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn bad_health_scores_are_422_and_change_nothing(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.ready_node("n").await;
    let before = app.node(&id).await;
    for body in [
        json!({"health_score": 1.5}),
        json!({"health_score": -0.1}),
        json!({"health_score": "high"}),
        json!({"health_score": null}),
        json!({"model_server": {"ready": true}}),
    ] {
        let r = app.heartbeat(&id, &token, &body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        assert_eq!(r.body["error"]["field"], "health_score", "{}", r.body);
    }
    let after = app.node(&id).await;
    assert_eq!(after["health_score"], before["health_score"]);
    assert_eq!(after["events"], before["events"]);
}

async fn heartbeats_move_node_between_ready_and_unhealthy_with_reasons(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.create_node("n").await;
    app.register(&id, &token).await;
    let r = app
        .heartbeat(
            &id,
            &token,
            &json!({"health_score": 0.31, "model_server": {"ready": true}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "unhealthy");
    assert_eq!(r.body["desired"], "run");
    let node = app.node(&id).await;
    assert_eq!(node["status_reason"], "health score 0.31 < 0.5");
    assert_eq!(node["events"][0]["reason"], "health score 0.31 < 0.5");
    let r = app.heartbeat(&id, &token, &healthy()).await;
    assert_eq!(r.body["status"], "ready");
    let r = app
        .heartbeat(
            &id,
            &token,
            &json!({"health_score": 0.9, "model_server": {"ready": false}}),
        )
        .await;
    assert_eq!(r.body["status"], "unhealthy");
    assert_eq!(
        app.node(&id).await["status_reason"],
        "model server not ready"
    );
}

async fn spot_notice_drains_and_later_heartbeats_keep_it_draining(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.ready_node("n").await;
    let notice = json!({"health_score": 1.0, "model_server": {"ready": true},
        "spot_interruption": {"source": "aws", "action": "terminate", "time": "2026-11-22T20:00:00Z"}});
    let r = app.heartbeat(&id, &token, &notice).await;
    assert_eq!(r.body["status"], "draining");
    assert_eq!(r.body["desired"], "drain");
    let node = app.node(&id).await;
    assert_eq!(node["events"][0]["kind"], "spot_interruption");
    assert!(node["status_reason"]
        .as_str()
        .unwrap()
        .contains("spot interruption notice (aws: terminate"));
    let r = app.heartbeat(&id, &token, &healthy()).await;
    assert_eq!(
        r.body["status"], "draining",
        "a healthy heartbeat does not undo draining"
    );
}

async fn admin_drain_and_delete(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.ready_node("n").await;
    let r = app.drain(&id).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "draining");
    assert_eq!(
        app.heartbeat(&id, &token, &healthy()).await.body["desired"],
        "drain"
    );
    let r = app.delete_node(&id).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "terminated");
    let r = app.heartbeat(&id, &token, &healthy()).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "the agent learns its node is gone"
    );
    assert_eq!(r.error_code(), "node_terminated");
    let r = app.drain(&id).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.delete_node(&id).await;
    assert_eq!(r.status, StatusCode::OK, "deleting twice is harmless");
    let r = app.get("/admin/nodes/nope", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

async fn heartbeat_before_registration_is_409(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.create_node("n").await;
    let r = app.heartbeat(&id, &token, &healthy()).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_code(), "not_registered");
}

async fn malformed_and_oversized_bodies_are_refused_in_json(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.ready_node("n").await;
    let r = app
        .send(
            app.client
                .post(app.url(&format!("/admin/nodes/{id}/heartbeat")))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code(), "invalid_json");
    let r = app
        .send(
            app.client
                .post(app.url(&format!("/admin/nodes/{id}/heartbeat")))
                .bearer_auth(&token)
                .body("{}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code(), "missing_content_type");
    let big = format!(
        "{{\"health_score\": 0.9, \"pad\": \"{}\"}}",
        "x".repeat(1024 * 1024 + 10)
    );
    // The server answers 413 without reading the body and then closes that connection, so the
    // oversized request goes on its own client rather than the shared connection pool.
    let one_off = reqwest::Client::new();
    let r = app
        .send(
            one_off
                .post(app.url(&format!("/admin/nodes/{id}/heartbeat")))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(big),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error_code(), "payload_too_large");
    let r = app.get("/admin/nowhere", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");
    let r = app.send(app.client.put(app.url("/admin/nodes"))).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.error_code(), "method_not_allowed");
}

async fn healthz_metrics_and_ui_need_no_auth(backend: Backend) {
    let app = app!(backend);
    let (_id, _) = app.ready_node("n").await;
    let r = app.get("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"status": "ok"}));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("skylaunch_nodes{status=\"ready\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("skylaunch_heartbeats_total{result=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("skylaunch_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("skylaunch_launch_jobs{status=\"succeeded\"} 0"),
        "{metrics}"
    );
    let ui = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(ui.text().await.unwrap().contains("skylaunch"));
}

async fn sweeper_marks_silent_nodes_unhealthy_then_offline(backend: Backend) {
    let mut app = app!(backend);
    app.config.heartbeat_interval = std::time::Duration::from_millis(200);
    app.config.offline_after = std::time::Duration::from_millis(1500);
    let app = app.restart().await;
    let (id, token) = app.ready_node("n").await;
    // As set above: 200 ms interval, 3 missed → unhealthy, 1.5 s → offline.
    let node = app.wait_for_status(&id, "unhealthy").await;
    assert_eq!(node["status_reason"], "missed 3 heartbeats");
    let node = app.wait_for_status(&id, "offline").await;
    assert_eq!(node["status_reason"], "no heartbeat for 1500 ms");
    assert_eq!(node["events"][0]["kind"], "sweeper");
    let r = app.heartbeat(&id, &token, &healthy()).await;
    assert_eq!(
        r.body["status"], "ready",
        "a node that comes back is ready again"
    );
}

async fn going_away_heartbeat_takes_node_offline(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.ready_node("n").await;
    let r = app
        .heartbeat(
            &id,
            &token,
            &json!({"health_score": 0.9, "going_away": true}),
        )
        .await;
    assert_eq!(r.body["status"], "offline");
    assert_eq!(
        app.node(&id).await["status_reason"],
        "agent is shutting down"
    );
}

async fn restart_keeps_nodes_statuses_and_telemetry(backend: Backend) {
    let mut app = app!(backend);
    app.config.offline_after = std::time::Duration::from_secs(600);
    app.config.heartbeat_interval = std::time::Duration::from_secs(60);
    let app = app.restart().await;
    let (ready, ready_token) = app.ready_node("ready-one").await;
    let (drained, _) = app.ready_node("drained-one").await;
    app.drain(&drained).await;
    app.heartbeat(
        &ready,
        &ready_token,
        &json!({"health_score": 0.77, "model_server": {"ready": true}}),
    )
    .await;
    let app = app.restart().await;
    let node = app.node(&ready).await;
    assert_eq!(node["status"], "ready");
    assert_eq!(
        node["health_score"], 0.77,
        "graceful shutdown flushes telemetry"
    );
    assert_eq!(app.node(&drained).await["status"], "draining");
    assert_eq!(
        app.heartbeat(&ready, &ready_token, &healthy()).await.status,
        StatusCode::OK,
        "tokens survive"
    );
}

async fn crash_never_loses_registrations_or_status_changes(backend: Backend) {
    let mut app = app!(backend);
    app.config.offline_after = std::time::Duration::from_secs(600);
    app.config.heartbeat_interval = std::time::Duration::from_secs(60);
    app.config.telemetry_flush_interval = std::time::Duration::from_secs(3600);
    let app = app.restart().await;
    let (id, token) = app.create_node("n").await;
    app.register(&id, &token).await;
    app.heartbeat(
        &id,
        &token,
        &json!({"health_score": 0.2, "model_server": {"ready": true}}),
    )
    .await;
    let app = app.crash_and_restart().await;
    let node = app.node(&id).await;
    assert_eq!(node["status"], "unhealthy");
    assert_eq!(node["status_reason"], "health score 0.2 < 0.5");
    assert_eq!(node["region"], "us-east-1");
    assert_eq!(
        node["events"].as_array().unwrap().len(),
        3,
        "created, registered, unhealthy"
    );
}

/// Reads server-sent events from `response` until `want` matches one (name, JSON data).
async fn next_event(
    response: &mut reqwest::Response,
    buffer: &mut String,
    want: impl Fn(&str, &Value) -> bool,
) -> (String, Value) {
    loop {
        while let Some(cut) = buffer.find("\n\n") {
            let block: String = buffer.drain(..cut + 2).collect();
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("message")
                .to_string();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let data: Value = serde_json::from_str(data).unwrap();
            if want(&name, &data) {
                return (name, data);
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream is still open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn fleet_events_stream_a_snapshot_then_changes_and_end_at_shutdown(backend: Backend) {
    let Some(db) = common::TestDb::new(backend).await else {
        return;
    };
    let mut config = common::test_config(&db);
    config.shutdown_timeout = Duration::from_secs(300);
    let mut app = TestApp::start(db, config).await;
    let (first, _) = app.ready_node("first").await;
    let unauthorised = app.get("/admin/nodes/events", None).await;
    assert_eq!(unauthorised.status, StatusCode::UNAUTHORIZED);
    let mut stream = app
        .client
        .get(app.url("/admin/nodes/events"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut buffer = String::new();
    let (name, snapshot) = next_event(&mut stream, &mut buffer, |_, _| true).await;
    assert_eq!(name, "snapshot");
    assert_eq!(snapshot["nodes"][0]["id"], first.as_str());
    // A change made elsewhere arrives as a `nodes` event with the node as it is now.
    let (second, token) = app.create_node("second").await;
    app.register(&second, &token).await;
    app.heartbeat(
        &second,
        &token,
        &json!({"health_score": 0.2, "model_server": {"ready": true}}),
    )
    .await;
    let (_, change) = next_event(&mut stream, &mut buffer, |name, data| {
        name == "nodes"
            && data["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == second.as_str() && n["health_score"] == 0.2)
    })
    .await;
    assert!(change["nodes"].as_array().unwrap().len() <= 2);
    // A graceful stop ends the stream instead of waiting on it. (The test's bound is far below
    // the shutdown timeout set here, which a stream holding the server open would run into.)
    let running = app.running.take().unwrap();
    let stopped = tokio::spawn(running.shutdown());
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(
        end.is_ok(),
        "the event stream ended when the server stopped"
    );
    tokio::time::timeout(Duration::from_secs(20), stopped)
        .await
        .expect("shutdown did not wait for the stream")
        .unwrap();
}

async fn catalog_and_ui_files_are_served(backend: Backend) {
    let app = app!(backend);
    assert_eq!(
        app.get("/admin/catalog", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let catalog = app.get("/admin/catalog", Some(ADMIN_TOKEN)).await.body;
    let gpus = catalog["gpus"].as_array().unwrap();
    let l4 = gpus
        .iter()
        .find(|g| g["name"] == "L4")
        .expect("L4 in the catalogue");
    assert_eq!(l4["memory_gb"], 24);
    assert!(l4["clouds"].as_array().unwrap().contains(&json!("aws")));
    let aws = catalog["clouds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "aws")
        .unwrap();
    assert!(aws["regions"]
        .as_array()
        .unwrap()
        .contains(&json!("us-east-1")));
    assert!(catalog["providers"]
        .as_array()
        .unwrap()
        .contains(&json!("local")));
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert!(
            header("content-security-policy").contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
    }
}

async fn agent_endpoints_are_rate_limited_per_node(backend: Backend) {
    let Some(db) = common::TestDb::new(backend).await else {
        return;
    };
    let mut config = common::test_config(&db);
    // Burst of 10, then one a second (three per 5 s heartbeat interval is below that).
    config.agent_rate_per_node = 1.0;
    config.heartbeat_interval = Duration::from_secs(5);
    let app = TestApp::start(db, config).await;
    let (busy, busy_token) = app.ready_node("busy").await;
    let (calm, calm_token) = app.ready_node("calm").await;
    let mut limited = None;
    for _ in 0..15 {
        let r = app.heartbeat(&busy, &busy_token, &healthy()).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let limited = limited.expect("a flood of heartbeats is limited");
    assert_eq!(limited.error_code(), "rate_limited");
    assert!(limited.body["error"]["retry_after_s"].as_f64().unwrap() >= 1.0);
    assert!(
        limited.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&busy),
        "{}",
        limited.body
    );
    // Registration counts too; another node is not affected.
    assert_eq!(
        app.register(&busy, &busy_token).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        app.heartbeat(&calm, &calm_token, &healthy()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.node(&busy).await["status"],
        "ready",
        "nothing changed by the refused calls"
    );
    // A flood with a wrong token for the calm node does not use up its real agent's allowance.
    for _ in 0..15 {
        let r = app.heartbeat(&calm, "not-the-token", &healthy()).await;
        assert!(
            r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::TOO_MANY_REQUESTS,
            "{}",
            r.body
        );
    }
    assert_eq!(
        app.heartbeat(&calm, &calm_token, &healthy()).await.status,
        StatusCode::OK
    );
}

/// Found by the fuzz run on PostgreSQL, which cannot store NUL in text: a NUL in an id is
/// "not found", a NUL in a body is a 400, and neither changes anything.
async fn nul_characters_are_refused_not_a_server_error(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (id, token) = app.create_node("nul-test").await;
    let r = app
        .post(
            "/admin/nodes/register?node_id=ab%00cd",
            Some(&token),
            &registration(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = app
        .get("/admin/launch-jobs/ab%00cd", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = app.get("/admin/nodes/ab%00cd", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let mut reg = registration();
    reg["region"] = json!("us-east-1\u{0}");
    let r = app
        .post(
            &format!("/admin/nodes/register?node_id={id}"),
            Some(&token),
            &reg,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_character");
    let r = app
        .post(
            "/admin/nodes",
            Some(ADMIN_TOKEN),
            &json!({"name": "x\u{0}y", "model_name": "m"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(
        app.node(&id).await["status"],
        "launching",
        "nothing changed"
    );
}

/// Sends `requests` pipelined on one connection and reads every answer's head (bodies are
/// skipped by their length). Returns the answers' status codes.
async fn pipelined(app: &TestApp, requests: &[Vec<u8>]) -> Vec<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let all: Vec<u8> = requests.concat();
    let (mut read, mut write) = stream.split();
    let writer = async {
        write.write_all(&all).await.unwrap();
    };
    let reader = async {
        let mut buf = Vec::new();
        let mut statuses = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while statuses.len() < requests.len() {
            let mut lines = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut lines);
            if let Ok(httparse::Status::Complete(head)) = parsed.parse(&buf) {
                let length: usize = parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= head + length {
                    statuses.push(parsed.code.unwrap());
                    buf.drain(..head + length);
                    continue;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(30), read.read(&mut chunk))
                .await
                .expect("answers keep coming")
                .unwrap();
            assert!(
                n > 0,
                "the connection ended after {} answers",
                statuses.len()
            );
            buf.extend_from_slice(&chunk[..n]);
        }
        statuses
    };
    let ((), statuses) = tokio::join!(writer, reader);
    statuses
}

/// 100,000 requests with made-up methods and node ids leave the metrics page and the rate
/// limiter's buckets as they were after the first 10,000: nothing a client sends becomes a new
/// series or bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_methods_and_node_ids_do_not_grow_metrics_or_rate_buckets() {
    let app = app!(Backend::Sqlite);
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut batch = |n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let r = next();
                if i % 2 == 0 {
                    format!("M{r:X} /healthz HTTP/1.1\r\nhost: s\r\n\r\n").into_bytes()
                } else {
                    let id = if i % 4 == 1 {
                        uuid_from(r, next())
                    } else {
                        format!("junk-{r:x}")
                    };
                    let body = r#"{"health_score": 1.0}"#;
                    format!(
                        "POST /admin/nodes/{id}/heartbeat HTTP/1.1\r\nhost: s\r\nauthorization: Bearer t{r:x}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .into_bytes()
                }
            })
            .collect()
    };
    // The metrics page's own request series exist from its first read on.
    app.metrics().await;
    let mut sizes = Vec::new();
    for round in 0..10 {
        for statuses in [
            pipelined(&app, &batch(5_000)).await,
            pipelined(&app, &batch(5_000)).await,
        ] {
            assert!(
                statuses.iter().all(|s| *s == 405 || *s == 404),
                "round {round}: {:?}",
                statuses.iter().find(|s| **s != 405 && **s != 404)
            );
        }
        let page = app.metrics().await;
        let buckets = common::metric_value(&page, "skylaunch_agent_rate_buckets");
        sizes.push((
            page.lines().count(),
            buckets.expect("the buckets gauge") as u64,
        ));
    }
    assert!(
        sizes.windows(2).all(|w| w[0] == w[1]),
        "metrics lines and rate buckets stay flat: {sizes:?}"
    );
    assert!(sizes[0].1 <= 2, "one bucket for the one source: {sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_bodies_over_64_kib_and_overlong_report_fields_are_refused() {
    let app = app!(Backend::Sqlite);
    let (id, token) = app.create_node("big-1").await;
    assert_eq!(app.register(&id, &token).await.status, StatusCode::OK);
    let padded = json!({"health_score": 1.0, "model_server": {"ready": true, "error": "x".repeat(70 * 1024)}});
    let r = app.heartbeat(&id, &token, &padded).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    let long =
        json!({"health_score": 1.0, "model_server": {"ready": true, "error": "x".repeat(4000)}});
    let r = app.heartbeat(&id, &token, &long).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["error"]["field"], "model_server.error");
    let many =
        json!({"health_score": 1.0, "model_server": {"ready": true, "models": vec!["m"; 40]}});
    assert_eq!(
        app.heartbeat(&id, &token, &many).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.heartbeat(&id, &token, &healthy()).await.status,
        StatusCode::OK
    );
}

fn uuid_from(a: u64, b: u64) -> String {
    let n = (u128::from(a) << 64) | u128::from(b);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

async fn register_with(
    app: &TestApp,
    id: &str,
    token: &str,
    model: &str,
    endpoint: &str,
) -> common::Reply {
    let mut body = registration();
    body["model_name"] = model.into();
    body["endpoint_url"] = endpoint.into();
    app.post(
        &format!("/admin/nodes/register?node_id={id}"),
        Some(token),
        &body,
    )
    .await
}

async fn a_node_token_cannot_take_another_models_traffic(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app
        .create_node_from(
            &json!({"name": "victim-of-m", "model_name": "test/model", "provider": "local"}),
        )
        .await;
    let r = register_with(&app, &id, &token, "other/model", "http://127.0.0.1:8000").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.error_code(), "model_mismatch");
    let node = app.node(&id).await;
    assert_eq!(node["model_name"], "test/model");
    assert_eq!(node["status"], "launching", "nothing registered");
    assert!(node["endpoint_url"].is_null());
    let events = node["events"].to_string();
    assert!(
        events.contains("registration_refused") && events.contains("other/model"),
        "{events}"
    );
}

async fn metadata_loopback_and_foreign_endpoints_are_refused(backend: Backend) {
    let app = app!(backend);
    // A node off this machine (the default provider): only the address it connects from
    // (127.0.0.1 here) would do, and loopback never does.
    let (id, token) = app
        .create_node_from(&json!({"name": "remote", "model_name": "test/model"}))
        .await;
    for endpoint in [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]:8000",
        "http://127.0.0.1:8000",
        "http://10.0.0.9:8000",
        "http://metadata.google.internal/",
    ] {
        let r = register_with(&app, &id, &token, "test/model", endpoint).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{endpoint}: {}", r.body);
        assert_eq!(r.error_code(), "endpoint_refused", "{endpoint}");
    }
    assert_eq!(app.node(&id).await["status"], "launching");
    // Even a node of this machine may not name a metadata address.
    let (id, token) = app
        .create_node_from(
            &json!({"name": "local-1", "model_name": "test/model", "provider": "local"}),
        )
        .await;
    let r = register_with(&app, &id, &token, "test/model", "http://169.254.169.254/").await;
    assert_eq!(r.error_code(), "endpoint_refused");
    let r = register_with(&app, &id, &token, "test/model", "http://127.0.0.1:8000").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "loopback on this machine: {}",
        r.body
    );
}

async fn a_node_cannot_point_traffic_back_at_the_control_plane(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app
        .create_node_from(
            &json!({"name": "loop-1", "model_name": "test/model", "provider": "local"}),
        )
        .await;
    let own = app.base.replace("localhost", "127.0.0.1");
    let r = register_with(&app, &id, &token, "test/model", &format!("{own}/")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.error_code(), "endpoint_refused");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("loop"));
    // A request that already went through a skylaunch load balancer is refused, not forwarded.
    let r = app
        .send(
            app.client
                .post(app.url("/v1/chat/completions"))
                .header("x-skylaunch-hop", "1")
                .json(&json!({"model": "test/model", "messages": []})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 508, "{}", r.body);
    assert_eq!(r.error_code(), "loop_detected");
}

async fn an_endpoint_the_admin_set_is_kept(backend: Backend) {
    let app = app!(backend);
    let (id, token) = app.create_node_from(&json!({"name": "pinned", "model_name": "test/model", "endpoint_url": "http://gpu-7.lab:8000"}),
    )
    .await;
    let r = register_with(&app, &id, &token, "test/model", "http://169.254.169.254/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(app.node(&id).await["endpoint_url"], "http://gpu-7.lab:8000");
}

on_both_backends!(
    a_node_token_cannot_take_another_models_traffic,
    metadata_loopback_and_foreign_endpoints_are_refused,
    a_node_cannot_point_traffic_back_at_the_control_plane,
    an_endpoint_the_admin_set_is_kept,
    nul_characters_are_refused_not_a_server_error,
    created_node_has_one_time_token_and_waits_for_agent,
    duplicate_live_name_conflicts,
    name_of_terminated_node_can_be_reused,
    invalid_new_node_is_422_and_creates_nothing,
    admin_endpoints_need_the_admin_token,
    agent_endpoints_refuse_the_admin_token,
    heartbeat_with_other_nodes_token_is_rejected,
    register_unknown_node_is_404,
    malformed_registration_names_the_field_and_changes_nothing,
    registering_again_is_idempotent,
    bad_health_scores_are_422_and_change_nothing,
    heartbeats_move_node_between_ready_and_unhealthy_with_reasons,
    spot_notice_drains_and_later_heartbeats_keep_it_draining,
    admin_drain_and_delete,
    heartbeat_before_registration_is_409,
    malformed_and_oversized_bodies_are_refused_in_json,
    healthz_metrics_and_ui_need_no_auth,
    sweeper_marks_silent_nodes_unhealthy_then_offline,
    going_away_heartbeat_takes_node_offline,
    restart_keeps_nodes_statuses_and_telemetry,
    crash_never_loses_registrations_or_status_changes,
    fleet_events_stream_a_snapshot_then_changes_and_end_at_shutdown,
    catalog_and_ui_files_are_served,
    agent_endpoints_are_rate_limited_per_node,
);

/// Several processes starting together on one fresh PostgreSQL database: each migration runs
/// once (under an advisory lock) and every process starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_migrate_once() {
    let Some(db) = common::TestDb::new(Backend::Postgres).await else {
        return;
    };
    // Four connects in flight at once, each on its own connection pool.
    let starts = (0..4).map(|_| skylaunch::store::Store::connect(&db.url));
    let stores: Vec<_> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(|s| s.expect("every process starts"))
        .collect();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT version, COUNT(*) FROM schema_migrations GROUP BY version ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(rows.len() >= 3, "{rows:?}");
    assert!(
        rows.iter().all(|(_, n)| *n == 1),
        "each migration recorded once: {rows:?}"
    );
    for store in stores {
        store.close().await;
    }
}
