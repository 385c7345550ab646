//! `/v1/*`: the OpenAI-compatible endpoints. Completions, chat completions and embeddings are
//! routed by the body's `model` to a ready node; `GET /v1/models` lists the models with at least
//! one. Bearer keys from `SKYLAUNCH_API_KEYS` when set.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, Request as HttpRequest, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::AppState;
use crate::http::headers::{forwarded_request_header, HOP_HEADER};
use crate::keys::Caller;
use crate::routing::meter::{self, Meter};
use crate::routing::{Forwarded, ProxyError};

/// The answer to a request that already went through a skylaunch load balancer.
pub fn loop_detected() -> ApiError {
    ApiError::new(
        StatusCode::LOOP_DETECTED,
        "loop_detected",
        format!("this request already passed through a skylaunch load balancer ({HOP_HEADER}): a node's endpoint points back at a control plane"),
    )
}

/// Who sent a request with this `Authorization` header value: an environment key, a managed
/// key, or anyone when `/v1` is open.
pub fn check_key(state: &AppState, authorization: Option<&[u8]>) -> Result<Caller, ApiError> {
    state
        .keys
        .authenticate(authorization)
        .map_err(ApiError::from)
}

#[utoipa::path(get, path = "/v1/models", tag = "inference", security((), ("api_key" = [])), responses((status = 200, description = "Models served by ready nodes (OpenAI format)", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn list_models(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_key(&state, authorization(&headers))?;
    let table = &state.proxy.table;
    let served = table.models();
    let mut data: Vec<Value> = served
        .iter()
        .map(|(id, ready)| json!({"id": id, "object": "model", "created": 0, "owned_by": "skylaunch", "ready_nodes": ready, "status": "ready"}))
        .collect();
    // Models whose deployment is at zero replicas: a request waits while one launches.
    for id in table.cold.models() {
        if !served.iter().any(|(m, _)| *m == id) {
            data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": "skylaunch", "ready_nodes": 0, "status": "scaled_to_zero", "waiting_requests": table.cold.held(&id)}));
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

/// When a client turned away during a cold start should try again.
const COLD_START_RETRY_AFTER_S: u64 = 10;

enum BodyError {
    TooLarge,
    Read(String),
}

/// Most of an oversized body read and dropped before the 413 goes out: a client still uploading
/// when the server closes the connection sees a broken pipe instead of the answer (nginx's
/// lingering close does the same).
const DRAIN_AT_MOST: usize = 64 * 1024 * 1024;
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// The request body, up to `limit` bytes.
async fn read_body<B>(mut body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    // A body that comes in one piece (most do) is kept as it came, not copied.
    let mut first: Option<Bytes> = None;
    let mut read: Vec<u8> = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        let so_far = first.as_ref().map_or(read.len(), Bytes::len);
        if so_far + chunk.len() > limit {
            let until = tokio::time::Instant::now() + DRAIN_FOR;
            let mut drained = 0;
            while drained < DRAIN_AT_MOST {
                match tokio::time::timeout_at(until, next_chunk(&mut body)).await {
                    Ok(Some(Ok(more))) => drained += more.len(),
                    _ => break,
                }
            }
            return Err(BodyError::TooLarge);
        }
        if read.is_empty() && first.is_none() {
            first = Some(chunk);
            continue;
        }
        if let Some(first) = first.take() {
            read.extend_from_slice(&first);
        }
        read.extend_from_slice(&chunk);
    }
    Ok(first.unwrap_or_else(|| Bytes::from(read)))
}

/// The body's next piece of data; trailers are skipped.
async fn next_chunk<B>(body: &mut B) -> Option<Result<Bytes, B::Error>>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    loop {
        match body.frame().await? {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

/// The one field the load balancer reads from a request body. The rest is skipped by the parser,
/// not built into a JSON tree: a long prompt costs a scan, not an allocation per value.
#[derive(serde::Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow)]
    model: std::borrow::Cow<'a, str>,
    /// Whether the answer streams, and whether the client asked for its usage: the load
    /// balancer asks for it when not (to meter the stream).
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The route a `POST` to `path` (without its query) is forwarded on (`/v1/chat/completions`,
/// `/v1/completions`, `/v1/embeddings`), if it is one.
pub fn forwarded_path(path: &str) -> Option<&'static str> {
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
        .into_iter()
        .find(|route| *route == path)
}

/// The `Authorization` header's value.
fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(AUTHORIZATION).map(HeaderValue::as_bytes)
}

/// A `POST` on a [`forwarded_path`] that hyper read (the HTTP server hands hyper the
/// connections it does not read itself), served ahead of the router: it skips route matching, middleware and
/// extractors, and is counted in the request metrics like every other route.
pub async fn serve_forwarded<B>(
    state: AppState,
    route: &'static str,
    request: HttpRequest<B>,
) -> Response
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let response = proxy(&state, &parts.uri, &parts.headers, body)
        .await
        .map_or_else(IntoResponse::into_response, Forwarded::into_response);
    super::count_request(
        &state,
        route,
        parts.method.as_str(),
        response.status(),
        started,
    );
    response
}

/// `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` through the router (the
/// server hands these to [`serve_forwarded`] first).
pub async fn forward(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    proxy(&state, &uri, &headers, body)
        .await
        .map(Forwarded::into_response)
}

async fn proxy<B>(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: B,
) -> Result<Forwarded, ApiError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let caller = check_key(state, authorization(headers))?;
    if headers.contains_key(HOP_HEADER) {
        return Err(loop_detected());
    }
    let limit = state.proxy.settings.body_limit;
    let body = read_body(body, limit).await.map_err(|e| match e {
        BodyError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than the {limit} byte limit for /v1 (SKYLAUNCH_PROXY_BODY_LIMIT)"),
        ),
        BodyError::Read(e) => {
            ApiError::bad_request("invalid_body", format!("could not read the request body: {e}"))
        }
    })?;
    let forwarded: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        .filter(|(name, _)| forwarded_request_header(name))
        .collect();
    let hints: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        .filter(|(name, _)| name.len() > 2 && name[..2].eq_ignore_ascii_case(b"x-"))
        .collect();
    // A client's absolute-form target (`http://host/v1/...`) goes on in origin form.
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    forward_body(state, &caller, path, &forwarded, &hints, body).await
}

/// Forwards a request whose body was read (and whose key was checked) to a node serving the
/// body's `model`: `path` is its path and query, `headers` those a model server gets, `hints`
/// its `X-` headers (for the model's routing policy).
pub async fn forward_body(
    state: &AppState,
    caller: &Caller,
    path: &str,
    headers: &[(&[u8], &[u8])],
    hints: &[(&[u8], &[u8])],
    body: Bytes,
) -> Result<Forwarded, ApiError> {
    let read = serde_json::from_slice::<ModelOnly>(&body)
        .ok()
        .filter(|m| !m.model.is_empty());
    let (model, stream, include_usage) = read
        .map(|m| {
            let include_usage = m.stream_options.and_then(|o| o.include_usage) == Some(true);
            (m.model.into_owned(), m.stream == Some(true), include_usage)
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request",
                "the body must be a JSON object with a \"model\"",
            )
            .with("field", "model")
        })?;
    state.keys.admit(caller, &model)?;
    let ask_usage = state.proxy.settings.meter_streams;
    let (ask, asking) = meter::ask_for_usage(stream, include_usage || !ask_usage, &body);
    let body = asking.unwrap_or(body);
    let mut forwarded = state
        .proxy
        .forward(&model, path, headers, hints, body)
        .await;
    if let Ok(f) = &mut forwarded {
        // The model's name as its token series holds it: no copy per request.
        let name = f
            .tokens
            .as_ref()
            .map_or_else(|| Arc::from(model.as_str()), |t| t.model.clone());
        f.body.meter(
            Meter::new(
                state.keys.clone(),
                caller.clone(),
                name,
                f.deployment.clone(),
                &ask,
            )
            .with_series(f.tokens.clone()),
        );
    }
    // Failed answers per model: what a deployment's replacement records as "failed meanwhile".
    match &forwarded {
        Ok(f) if f.status.is_server_error() => state.proxy.table.note_failed_answer(&model),
        Err(ProxyError::NoHealthyNodes(none)) if none.by_status.is_empty() => {}
        Err(_) => state.proxy.table.note_failed_answer(&model),
        Ok(_) => {}
    }
    forwarded.map_err(|e| match e {
            // No live node has the model at all: what OpenAI and vLLM answer for an unknown
            // model, which clients do not retry (a 503 would make them retry in vain).
            ProxyError::NoHealthyNodes(none) if none.by_status.is_empty() => ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "no node serves model {}; GET /v1/models lists the models served now",
                    none.model
                ),
            )
            .with("model", none.model.clone()),
            ProxyError::NoHealthyNodes(none) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_nodes",
                none.to_string(),
            )
            .with("model", none.model.clone())
            .with("nodes", json!(none.by_status)),
            ProxyError::AllFailed { model, tried: 0 } => {
                let ready = state.proxy.table.endpoints(&model).map_or(0, |e| e.len());
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_healthy_nodes",
                    format!("no healthy nodes for model {model}: {ready} ready, every one ejected after failing requests; try again shortly"),
                )
                .with("model", model)
                .with("nodes", json!({"ready_but_ejected": ready}))
            }
            ProxyError::AllFailed { model, tried } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                format!("no model server for {model} accepted the connection ({tried} tried)"),
            ),
            ProxyError::Timeout { node } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("the model server on node {node} did not answer in time"),
            ),
            ProxyError::Upstream { node, message } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("the model server on node {node} failed: {message}"),
            ),
            ProxyError::ColdStartTimeout { model, waited } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cold_start_timeout",
                format!(
                    "model {model} is scaled to zero and no replica was ready after {} s of waiting; one is being launched: try again shortly",
                    waited.as_secs()
                ),
            )
            .with("model", model)
            .retry_after(COLD_START_RETRY_AFTER_S),
            ProxyError::ColdStartFull { model, max_held } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cold_start_busy",
                format!(
                    "model {model} is scaled to zero and {max_held} requests already wait for its replica to start; try again shortly"
                ),
            )
            .with("model", model)
            .retry_after(COLD_START_RETRY_AFTER_S),
        })
}
