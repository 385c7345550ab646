//! The HTTP surface: every route in one place, the body-size limit, request metrics, and the
//! JSON fallbacks for unknown routes and methods.

pub mod cloud_events;
pub mod connections;
pub mod error;
pub mod extract;
mod front;
pub mod jobs;
pub mod limits;
pub mod nodes;
pub mod openapi;
pub mod sse;
pub mod system;
pub mod threads;
pub mod v1;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;

use crate::app::AppState;
use crate::metrics::{Counter, Histogram};
use crate::background::AbortOnDrop;
use error::ApiError;
pub use threads::ConnectionThreads;

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

/// Serves HTTP/1.1 on `listener` until `shutdown` completes; then stops accepting, lets each
/// open connection finish the request it is on, and returns once all are closed.
///
/// Connections are served on `threads`, in turn, each a thread with a single-threaded runtime
/// of its own (see [`threads`]); requests for the router run on the runtime that calls this.
/// Requests the load balancer forwards are read and answered by [`front`] itself; every other
/// request goes to the router, read and answered by [`front`] too or, when it is not one that
/// reader takes, by hyper's HTTP/1.1 server (see [`Front`]), without a general-purpose server's
/// per-request service layers.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    mut threads: ConnectionThreads,
    shutdown: impl Future<Output = ()>,
) {
    let router = router(state.clone());
    let main = tokio::runtime::Handle::current();
    // Dropping `stop` tells every connection to finish. Each holds a clone of `open`, so
    // `tracker.closed()` completes once the last one has closed.
    let (stop, stopping) = watch::channel(());
    let (tracker, open) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (mut io, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if accept_failed(e) {
                    // Not spinning on a failure that lasts (out of file descriptors, say).
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        () = &mut shutdown => break,
                    }
                }
                continue;
            }
        };
        let ticket = match state.connections.admit(peer) {
            Ok(ticket) => ticket,
            Err(why) => {
                refuse(&io, why);
                continue;
            }
        };
        // No Nagle delay: streamed tokens and small answers leave as soon as they are written.
        crate::app::no_delay(&mut io);
        // Off this runtime's reactor, onto the connection thread's.
        let io = match io.into_std() {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "could not hand a connection to its thread");
                continue;
            }
        };
        let state = state.clone();
        let router = router.clone();
        let main = main.clone();
        let stopping = stopping.clone();
        let open = open.clone();
        threads.next().spawn(async move {
            match TcpStream::from_std(io) {
                Ok(io) => {
                    let io = ticket.open(io);
                    let front = Front {
                        state,
                        router,
                        main,
                        peer,
                        slot: io.slot().clone(),
                    };
                    front::serve_connection(io, front, stopping).await
                }
                Err(e) => tracing::debug!(error = %e, "could not take a connection on its thread"),
            }
            drop(open);
        });
    }
    drop(listener);
    drop(stop);
    drop(open);
    tracker.closed().await;
    // Stops the connection threads.
    drop(threads);
}

/// Answers a connection refused at accept with a 503 if its socket takes it at once, and
/// closes it: a refusal never waits on the client.
fn refuse(io: &TcpStream, why: connections::Refused) {
    let message = match why {
        connections::Refused::PerSource => {
            "too many open connections from your address; close idle ones or try again shortly"
        }
        connections::Refused::Full => {
            "the control plane is at its connection limit; try again shortly"
        }
    };
    let body = serde_json::json!({"error": {"code": "too_many_connections", "message": message, "reason": why.as_str()}})
        .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = io.try_write(answer.as_bytes());
    tracing::debug!(reason = why.as_str(), "refused a connection");
}

/// The answer to a request that is not an agent's on a connection admitted into the places
/// kept for agents.
fn overloaded() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "the control plane is near its connection limit and serves only agent requests on this connection; try again shortly on a new one",
    )
    .retry_after(1)
}

/// After a failed `accept`: whether accepting should wait a moment. A connection that went away
/// before it was taken is no matter; any other failure is logged.
fn accept_failed(e: std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return false;
    }
    tracing::error!(error = %e, "could not accept a connection; trying again in a second");
    true
}

/// One connection's requests: those the load balancer forwards go straight to it; the rest
/// (the admin API, the UI, `GET /v1/models`, wrong methods) go through the router, on the main
/// runtime, with the peer's address for handlers that want it.
#[derive(Clone)]
struct Front {
    state: AppState,
    router: Router,
    /// The runtime the router's handlers run on.
    main: tokio::runtime::Handle,
    peer: SocketAddr,
    /// The connection's deadlines, and whether it is in the agents' places.
    slot: Arc<connections::Slot>,
}

impl Front {
    /// The refusal of a request for `path` on a connection admitted into the agents' places,
    /// which serve only agent requests.
    fn refused_here(&self, path: &str) -> Option<ApiError> {
        (self.slot.restricted && !connections::allowed_when_restricted(path)).then(overloaded)
    }

    /// A request on a connection hyper serves. Its body is held to the body timeout.
    async fn handle(self, request: Request<Incoming>) -> Result<Response, Infallible> {
        // A head read by hyper: hyper's header timer covers the next one.
        self.slot.busy();
        if let Some(refused) = self.refused_here(request.uri().path()) {
            let mut response = refused.into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return Ok(response);
        }
        let request = request.map(|body| connections::ProgressBody::new(body, self.slot.clone()));
        if let Some(route) = v1::forwarded_route(request.method(), request.uri().path()) {
            return Ok(v1::serve_forwarded(self.state, route, request).await);
        }
        Ok(self.route(request).await)
    }

    /// Serves a request through the router, on the main runtime: the admin API's database
    /// connections and the tasks its handlers start belong there, not to a connection thread
    /// (see [`threads`]). The answer's body is read here. Dropping this (the connection went
    /// away) drops the handler.
    async fn route<B>(&self, mut request: Request<B>) -> Response
    where
        B: hyper::body::Body<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let request = request.map(axum::body::Body::new);
        let mut router = self.router.clone();
        let handler = AbortOnDrop(self.main.spawn(async move { router.call(request).await }));
        match handler.await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(e) => ApiError::internal(&e).into_response(),
        }
    }
}
