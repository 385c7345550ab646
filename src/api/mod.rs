//! The HTTP surface: every route in one place, the body-size limit, request metrics, and the
//! JSON fallbacks for unknown routes and methods.

pub mod cloud_events;
pub mod error;
pub mod extract;
mod front;
pub mod jobs;
pub mod limits;
pub mod nodes;
pub mod openapi;
pub mod sse;
pub mod system;
pub mod v1;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use tokio::sync::watch;
use tower_service::Service;

use crate::app::AppState;
use crate::metrics::{Counter, Histogram};
use error::ApiError;

/// Request bodies over this many bytes are refused with 413.
pub const BODY_LIMIT: usize = 1024 * 1024;

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
        .route("/admin/nodes/register", post(nodes::register_node))
        .route("/admin/nodes/events", get(nodes::node_events))
        .route("/admin/catalog", get(system::catalog))
        .route(
            "/admin/nodes/{id}",
            get(nodes::get_node).delete(nodes::delete_node),
        )
        .route("/admin/nodes/{id}/drain", post(nodes::drain_node))
        .route("/admin/nodes/{id}/heartbeat", post(nodes::heartbeat))
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
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    count_request(&state, route, method.as_str(), response.status(), started);
    response
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

/// Serves HTTP/1.1 on `listener` until `shutdown` completes; then stops accepting, lets each
/// open connection finish the request it is on, and returns once all are closed.
///
/// Requests the load balancer forwards are read and answered by [`front`] itself; every other
/// request goes to hyper's HTTP/1.1 server (see [`Front`]), without a general-purpose server's
/// per-request service layers.
pub async fn serve<L>(mut listener: L, state: AppState, shutdown: impl Future<Output = ()>)
where
    L: Listener<Addr = SocketAddr>,
{
    let router = router(state.clone());
    // Dropping `stop` tells every connection to finish. Each holds a clone of `open`, so
    // `tracker.closed()` completes once the last one has closed.
    let (stop, stopping) = watch::channel(());
    let (tracker, open) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let front = Front {
            state: state.clone(),
            router: router.clone(),
            peer,
        };
        let stopping = stopping.clone();
        let open = open.clone();
        tokio::spawn(async move {
            front::serve_connection(io, front, stopping).await;
            drop(open);
        });
    }
    drop(listener);
    drop(stop);
    drop(open);
    tracker.closed().await;
}

/// One connection's requests: those the load balancer forwards go straight to it; the rest
/// (the admin API, the UI, `GET /v1/models`, wrong methods) go through the router, with the
/// peer's address for handlers that want it.
#[derive(Clone)]
struct Front {
    state: AppState,
    router: Router,
    peer: SocketAddr,
}

impl Front {
    async fn handle(mut self, mut request: Request<Incoming>) -> Result<Response, Infallible> {
        if let Some(route) = v1::forwarded_route(request.method(), request.uri().path()) {
            return Ok(v1::serve_forwarded(self.state, route, request).await);
        }
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.router.call(request).await
    }
}
