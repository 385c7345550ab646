//! The API behind the HTTP server ([`crate::http::Dispatch`]): the requests the load balancer
//! forwards go straight to [`v1`]'s forwarding, everything else through the router, on the
//! main runtime, with the peer's address for handlers that want it.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use hyper::body::Body as HttpBody;
use tower_service::Service;

use super::error::ApiError;
use super::state::AppState;
use super::{request_series, v1, BODY_LIMIT};
use crate::background::AbortOnDrop;
use crate::http::{Dispatch, ForwardHead, ForwardRequest, Refusal, Reply};
use crate::keys::Caller;
use crate::metrics::{Counter, Histogram};
use crate::routing::Relay;

/// The API as the HTTP server calls it. One clone per connection.
#[derive(Clone)]
pub struct ApiDispatch {
    state: AppState,
    router: Router,
    /// The runtime the router's handlers run on.
    main: tokio::runtime::Handle,
}

impl ApiDispatch {
    /// The API over `state`; the router's handlers will run on the current runtime.
    pub fn new(state: AppState) -> ApiDispatch {
        ApiDispatch {
            router: super::router(state.clone()),
            state,
            main: tokio::runtime::Handle::current(),
        }
    }
}

/// The request-metric series of one connection's forwarded requests, by route and status,
/// looked up once.
#[derive(Default)]
pub struct ForwardedSeries(Vec<(&'static str, StatusCode, Counter, Histogram)>);

impl ForwardedSeries {
    /// Counts a forwarded request in the HTTP metrics, as [`super::count_request`] does.
    fn count(
        &mut self,
        state: &AppState,
        route: &'static str,
        status: StatusCode,
        started: Instant,
    ) {
        let at = match self
            .0
            .iter()
            .position(|(r, s, _, _)| *r == route && *s == status)
        {
            Some(at) => at,
            None => {
                let (counter, histogram) = request_series(state, route, "POST", status);
                self.0.push((route, status, counter, histogram));
                self.0.len() - 1
            }
        };
        let (_, _, counter, histogram) = &self.0[at];
        counter.inc();
        histogram.observe(started.elapsed().as_secs_f64());
    }
}

impl Dispatch for ApiDispatch {
    type Local = ForwardedSeries;
    type Body = Relay;
    type Caller = Caller;

    fn forwarded_route(&self, path: &str) -> Option<&'static str> {
        v1::forwarded_path(path)
    }

    fn forward_body_limit(&self) -> usize {
        self.state.proxy.settings.body_limit
    }

    fn route_body_limit(&self) -> usize {
        BODY_LIMIT
    }

    fn allowed_when_restricted(&self, path: &str) -> bool {
        allowed_when_restricted(path)
    }

    fn refusal(&self, why: Refusal) -> Response {
        match why {
            Refusal::NotHttp(e) => ApiError::bad_request(
                "malformed_request",
                format!("the request is not valid HTTP/1.1: {e}"),
            ),
            Refusal::Restricted => overloaded(),
        }
        .into_response()
    }

    fn admit_forward(
        &self,
        series: &mut ForwardedSeries,
        head: &ForwardHead<'_>,
    ) -> Result<Caller, Box<Response>> {
        let admitted = if head.restricted && !allowed_when_restricted(head.path) {
            Err(overloaded())
        } else {
            v1::check_key(&self.state, head.authorization).and_then(|caller| {
                if head.looped {
                    Err(v1::loop_detected())
                } else {
                    Ok(caller)
                }
            })
        };
        admitted.map_err(|error| {
            series.count(&self.state, head.route, error.status, Instant::now());
            Box::new(error.into_response())
        })
    }

    async fn forward(
        &self,
        series: &mut ForwardedSeries,
        caller: Caller,
        request: ForwardRequest<'_>,
    ) -> Result<Reply<Relay>, Response> {
        let started = Instant::now();
        let answer = v1::forward_body(
            &self.state,
            &caller,
            request.path,
            request.headers,
            request.hints,
            request.body,
        )
        .await;
        let status = answer.as_ref().map_or_else(|e| e.status, |a| a.status);
        series.count(&self.state, request.route, status, started);
        match answer {
            Ok(forwarded) => Ok(Reply {
                status: forwarded.status,
                headers: forwarded.headers,
                extra: Some((crate::routing::proxy::NODE_HEADER, forwarded.node)),
                body: forwarded.body,
            }),
            Err(error) => Err(error.into_response()),
        }
    }

    async fn forward_streaming<B>(&self, route: &'static str, request: Request<B>) -> Response
    where
        B: HttpBody<Data = Bytes, Error: std::fmt::Display + Send> + Unpin + Send + 'static,
    {
        v1::serve_forwarded(self.state.clone(), route, request).await
    }

    /// Serves a request through the router, on the main runtime: the admin API's database
    /// connections and the tasks its handlers start belong there, not to a connection thread
    /// (see [`crate::http::threads`]). Dropping this (the connection went away) drops the
    /// handler.
    async fn route<B>(&self, peer: SocketAddr, mut request: Request<B>) -> Response
    where
        B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
    {
        request.extensions_mut().insert(ConnectInfo(peer));
        let request = request.map(Body::new);
        let mut router = self.router.clone();
        let handler = AbortOnDrop(self.main.spawn(async move { router.call(request).await }));
        match handler.await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(e) => ApiError::internal(&e).into_response(),
        }
    }
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

/// Whether a request on a connection admitted into the agents' places may be served there:
/// agent requests and the health check.
pub fn allowed_when_restricted(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    path == "/healthz"
        || path == "/admin/nodes/register"
        || path
            .strip_prefix("/admin/nodes/")
            .and_then(|rest| rest.strip_suffix("/heartbeat"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_agent_requests_and_the_health_check_pass_in_the_agents_places() {
        assert!(allowed_when_restricted("/admin/nodes/register?node_id=abc"));
        assert!(allowed_when_restricted("/admin/nodes/abc/heartbeat"));
        assert!(allowed_when_restricted("/healthz"));
        for path in [
            "/v1/chat/completions",
            "/admin/nodes",
            "/admin/nodes//heartbeat",
            "/admin/nodes/a/b/heartbeat",
            "/",
        ] {
            assert!(!allowed_when_restricted(path), "{path}");
        }
    }
}
