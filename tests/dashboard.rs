//! The Grafana dashboard in deploy/grafana/ queries only metrics skylaunch serves: every metric
//! named in its queries is in a real control plane's `/metrics` once it has served the traffic
//! the dashboard shows (a replica, a request and a stream, a node ejected from routing).

mod common;
mod standins;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The metric families the dashboard's queries name (histogram series by their family).
fn queried_families() -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/skylaunch-dashboard.json"
    ))
    .unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        exprs.push(v["query"].as_str().unwrap().to_string());
    }
    let name = regex::Regex::new(r"skylaunch_[a-z_]+").unwrap();
    exprs
        .iter()
        .flat_map(|e| name.find_iter(e).map(|m| m.as_str().to_string()))
        .map(|m| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s))
                .unwrap_or(&m)
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_served() {
    let families = queried_families();
    assert!(families.len() >= 10, "{families:?}");
    let Some(app) =
        standins::local_app(Backend::Sqlite, |c| c.allow_loopback_endpoints = true).await
    else {
        return;
    };
    app.create_deployment(
        &json!({"name": "dash", "model": "echo/dash", "provider": "local", "replicas": 1}),
    )
    .await;
    app.wait_deployment("dash", "its replica ready", |d| d["replicas"]["ready"] == 1)
        .await;
    let chat = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream,
               "messages": [{"role": "user", "content": "a few words to answer"}]})
    };
    for stream in [false, true] {
        let r = app
            .client
            .post(app.url("/v1/chat/completions"))
            .json(&chat("echo/dash", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    // A node whose model server refuses connections: requests to it eject it from routing.
    let closed = standins::free_port();
    let (id, token) = app
        .create_node_from(&json!({"name": "dead", "model_name": "dead/model", "provider": "local"}))
        .await;
    let mut registration = common::registration();
    registration["model_name"] = json!("dead/model");
    registration["endpoint_url"] = json!(format!("http://127.0.0.1:{closed}"));
    let r = app
        .send(
            app.client
                .post(app.url(&format!("/admin/nodes/register?node_id={id}")))
                .bearer_auth(&token)
                .json(&registration),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = app.heartbeat(&id, &token, &common::healthy()).await;
    assert_eq!(r.body["status"], "ready", "{}", r.body);
    for _ in 0..4 {
        let r = app
            .client
            .post(app.url("/v1/chat/completions"))
            .json(&chat("dead/model", false))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
    }

    // Usage reaches /metrics once written (every second): wait, bounded, for every family.
    let mut missing = families.clone();
    for _ in 0..100 {
        let page = app.metrics().await;
        missing.retain(|f| !page.contains(&format!("# TYPE {f} ")));
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not serve: {missing:?}"
    );
}
