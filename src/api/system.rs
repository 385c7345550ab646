//! Unauthenticated service endpoints: liveness, Prometheus metrics, and the embedded web UI.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::metrics::Gauge;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let nodes = state
        .fleet
        .count_by_status()
        .await
        .into_iter()
        .map(|(status, n)| (vec![("status", status.as_str().to_string())], n as f64))
        .collect();
    let counts = state.store.count_jobs_by_status().await.unwrap_or_default();
    let jobs = crate::launch::job::JobStatus::ALL
        .into_iter()
        .map(|s| {
            let n = counts
                .iter()
                .find(|(name, _)| name == s.as_str())
                .map_or(0, |(_, n)| *n);
            (vec![("status", s.as_str().to_string())], n as f64)
        })
        .collect();
    let in_flight = state
        .proxy
        .table
        .all()
        .iter()
        .map(|e| {
            (
                vec![("node", e.node_name.clone())],
                e.in_flight.load(std::sync::atomic::Ordering::Relaxed) as f64,
            )
        })
        .collect();
    let text = state.metrics.render(&[
        Gauge {
            name: "skylaunch_proxy_in_flight",
            help: "Requests in flight to each ready node's model server.",
            series: in_flight,
        },
        Gauge {
            name: "skylaunch_nodes",
            help: "Nodes by status.",
            series: nodes,
        },
        Gauge {
            name: "skylaunch_launch_jobs",
            help: "Launch jobs by status (succeeded, failed and cancelled are outcomes).",
            series: jobs,
        },
    ]);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

pub async fn ui_index() -> Html<&'static str> {
    Html(include_str!("../../web/index.html"))
}
