//! Unauthenticated service endpoints: liveness, Prometheus metrics, and the embedded web UI.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde_json::{json, Value};

use super::extract::Admin;
use crate::api::state::AppState;
use crate::catalog;
use crate::launch::providers::Provider;
use crate::metrics::Gauge;

#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "`{\"status\":\"ok\"}`", body = serde_json::Value)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
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
    let deployments = state.deployments.reconciler.gauges();
    let desired = deployments
        .iter()
        .map(|(name, g)| (vec![("deployment", name.clone())], g.desired as f64))
        .collect();
    let ready = deployments
        .iter()
        .map(|(name, g)| (vec![("deployment", name.clone())], g.ready as f64))
        .collect();
    let text = state.metrics.render(&[
        Gauge {
            name: "skylaunch_deployment_replicas_desired",
            help: "Replicas each deployment wants (0 once deleted).",
            series: desired,
        },
        Gauge {
            name: "skylaunch_deployment_replicas_ready",
            help: "Ready replicas of each deployment, as of the reconciler's last pass.",
            series: ready,
        },
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
            name: "skylaunch_connections_open",
            help: "Client connections open.",
            series: vec![(Vec::new(), state.connections.open() as f64)],
        },
        Gauge {
            name: "skylaunch_agent_rate_buckets",
            help: "Rate-limit buckets kept for the agent endpoints (per source address and per node).",
            series: vec![(Vec::new(), state.agent_limits.buckets() as f64)],
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

// The web UI's files are compiled in. `no-cache` makes a browser revalidate them, so an upgraded
// binary's UI is picked up on the next load. The policy lets the page load only its own script
// and style and talk only to this server; no other site may frame it.
const UI_HEADERS: [(header::HeaderName, &str); 4] = [
    (header::CACHE_CONTROL, "no-cache"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
];

#[utoipa::path(get, path = "/", tag = "ui", responses((status = 200, description = "The web UI", content_type = "text/html")))]
pub async fn ui_index() -> impl IntoResponse {
    (UI_HEADERS, Html(include_str!("../../web/index.html")))
}

#[utoipa::path(get, path = "/ui/app.js", tag = "ui", responses((status = 200, description = "The web UI script", content_type = "text/javascript")))]
pub async fn ui_script() -> impl IntoResponse {
    (
        UI_HEADERS,
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../web/app.js"),
    )
}

#[utoipa::path(get, path = "/ui/app.css", tag = "ui", responses((status = 200, description = "The web UI style sheet", content_type = "text/css")))]
pub async fn ui_style() -> impl IntoResponse {
    (
        UI_HEADERS,
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../web/app.css"),
    )
}

/// `GET /admin/catalog`: what a launch can ask for, for the Launch Instance form and scripts:
/// providers, templates, GPUs (memory, counts per VM, clouds) and each cloud's regions.
#[utoipa::path(get, path = "/admin/catalog", tag = "launch", security(("admin" = [])), responses((status = 200, description = "Providers, GPUs, regions and templates a launch may name", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn catalog(_: Admin) -> Json<Value> {
    let gpus: Vec<Value> = catalog::GPUS
        .iter()
        .map(|g| json!({"name": g.name, "memory_gb": g.memory_gb, "counts": g.counts, "clouds": g.clouds}))
        .collect();
    let clouds: Vec<Value> = catalog::CLOUDS
        .iter()
        .map(|c| json!({"name": c, "regions": catalog::regions(c)}))
        .collect();
    let providers: Vec<&str> = Provider::ALL
        .into_iter()
        .filter(|p| p.in_this_build())
        .map(Provider::as_str)
        .collect();
    Json(json!({
        "providers": providers,
        "templates": crate::launch::template::TEMPLATES,
        "gpus": gpus,
        "clouds": clouds,
    }))
}
