//! The HTTP API's handlers: every route in one place, the body-size limit, request metrics,
//! the JSON fallbacks for unknown routes and methods, and the [`dispatch`] the HTTP server
//! calls; handlers parse a request, call a domain operation and map its answer.

pub mod cloud_events;
pub mod deployments;
pub mod dispatch;
pub mod error;
pub mod extract;
pub mod hosts;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod nodes;
pub mod openapi;
pub mod providers;
pub mod sse;
pub mod state;
pub mod system;
pub mod usage;
pub mod v1;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};

use crate::metrics::{Counter, Histogram};
pub use dispatch::ApiDispatch;
use error::ApiError;
use state::AppState;

/// Request bodies over this many bytes are refused with 413.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The agents' requests (register, heartbeat) are small; a larger body is refused with 413.
const AGENT_BODY_LIMIT: extract::BodyLimit = extract::BodyLimit(64 * 1024);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(system::ui_index))
        .route("/ui/app.js", get(system::ui_script))
        .route("/ui/app.css", get(system::ui_style))
        .route("/healthz", get(system::healthz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(system::metrics))
        .route(
            "/admin/nodes",
            get(nodes::list_nodes).post(nodes::create_node),
        )
        .route(
            "/admin/nodes/register",
            post(nodes::register_node).layer(Extension(AGENT_BODY_LIMIT)),
        )
        .route("/admin/nodes/events", get(nodes::node_events))
        .route("/admin/catalog", get(system::catalog))
        .route("/admin/providers", get(providers::list_providers))
        .route(
            "/admin/nodes/{id}",
            get(nodes::get_node).delete(nodes::delete_node),
        )
        .route("/admin/nodes/{id}/drain", post(nodes::drain_node))
        .route(
            "/admin/nodes/{id}/heartbeat",
            post(nodes::heartbeat).layer(Extension(AGENT_BODY_LIMIT)),
        )
        .route(
            "/admin/launch-jobs",
            get(jobs::list_jobs).post(jobs::create_job),
        )
        .route("/admin/launch-jobs/{id}", get(jobs::get_job))
        .route("/admin/launch-jobs/{id}/logs", get(jobs::job_logs))
        .route("/admin/launch-jobs/{id}/events", get(jobs::job_events))
        .route("/admin/launch-jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/admin/task-yaml/preview", post(jobs::preview_task))
        .route("/admin/cloud-events", get(cloud_events::list_cloud_events))
        .route(
            "/admin/hosts",
            get(hosts::list_hosts).post(hosts::create_host),
        )
        .route(
            "/admin/hosts/{id}",
            get(hosts::get_host).delete(hosts::delete_host),
        )
        .route("/admin/hosts/{id}/probe", post(hosts::probe_host))
        .route(
            "/admin/api-keys",
            get(keys::list_keys).post(keys::create_key),
        )
        .route("/admin/api-keys/{id}", delete(keys::revoke_key))
        .route("/admin/usage", get(usage::get_usage))
        .route(
            "/admin/deployments",
            get(deployments::list_deployments).post(deployments::create_deployment),
        )
        .route(
            "/admin/deployments/{name}",
            get(deployments::get_deployment)
                .put(deployments::update_deployment)
                .delete(deployments::delete_deployment),
        )
        .route(
            "/admin/deployments/{name}/scale",
            post(deployments::scale_deployment),
        )
        .route(
            "/admin/deployments/{name}/retry",
            post(deployments::retry_deployment),
        )
        .route(
            "/admin/deployments/{name}/rollback",
            post(deployments::rollback_deployment),
        )
        .route(
            "/admin/deployments/{name}/actions",
            get(deployments::deployment_actions),
        )
        .route("/admin/actions", get(deployments::list_actions))
        .route(
            "/admin/actions/{id}/approve",
            post(deployments::approve_action),
        )
        .route(
            "/admin/actions/{id}/reject",
            post(deployments::reject_action),
        )
        .route("/downloads/skylaunch-agent", get(jobs::download_agent))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(refuse_large_bodies))
        // /v1 has its own, larger body limit (SKYLAUNCH_PROXY_BODY_LIMIT), applied as it reads.
        .route("/v1/models", get(v1::list_models))
        .route("/v1/chat/completions", post(v1::forward))
        .route("/v1/completions", post(v1::forward))
        .route("/v1/embeddings", post(v1::forward))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that HTTP method",
    )
}

/// Refuses a declared-too-large body before reading any of it; streamed bodies are cut off by
/// `DefaultBodyLimit` and refused by the JSON extractor.
async fn refuse_large_bodies(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return ApiError::payload_too_large().into_response();
    }
    next.run(req).await
}

async fn record_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    count_request(&state, route, method, response.status(), started);
    response
}

/// A request method as a metric label: the standard ones by name, any other as `other`, so a
/// client cannot make a series per made-up method.
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

const REQUESTS: &str = "skylaunch_http_requests_total";
const REQUESTS_HELP: &str = "HTTP requests handled, by route, method and status.";
const DURATION: &str = "skylaunch_http_request_duration_seconds";
const DURATION_HELP: &str = "HTTP request latency in seconds, by route.";

/// Counts a handled request in the HTTP metrics.
fn count_request(
    state: &AppState,
    route: &str,
    method: &str,
    status: StatusCode,
    started: Instant,
) {
    let (requests, duration) = request_series(state, route, method, status);
    requests.inc();
    duration.observe(started.elapsed().as_secs_f64());
}

/// The series a request is counted in, by route, method and status; a hot path keeps them.
fn request_series(
    state: &AppState,
    route: &str,
    method: &str,
    status: StatusCode,
) -> (Counter, Histogram) {
    (
        state.metrics.counter(
            REQUESTS,
            REQUESTS_HELP,
            &[
                ("route", route),
                ("method", method),
                ("status", status.as_str()),
            ],
        ),
        state
            .metrics
            .histogram(DURATION, DURATION_HELP, &[("route", route)]),
    )
}
