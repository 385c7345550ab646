//! `/v1/*`: the OpenAI-compatible endpoints. Completions, chat completions and embeddings are
//! routed by the body's `model` to a ready node; `GET /v1/models` lists the models with at least
//! one. Bearer keys from `SKYLAUNCH_API_KEYS` when set.

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::AppState;
use crate::routing::ProxyError;

fn check_key(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.api_keys.is_empty() {
        return Ok(());
    }
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let known = state.api_keys.iter().fold(false, |found, key| {
        found | bool::from(key.as_bytes().ct_eq(given.as_bytes()))
    });
    if known {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "send one of the control plane's API keys as Authorization: Bearer <key>",
        ))
    }
}

#[utoipa::path(get, path = "/v1/models", tag = "inference", security((), ("api_key" = [])), responses((status = 200, description = "Models served by ready nodes (OpenAI format)", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn list_models(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_key(&state, &headers)?;
    let data: Vec<Value> = state
        .proxy
        .table
        .models()
        .into_iter()
        .map(|(id, ready)| json!({"id": id, "object": "model", "created": 0, "owned_by": "skylaunch", "ready_nodes": ready}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// Most of an oversized body read and dropped before the 413 goes out: a client still uploading
/// when the server closes the connection sees a broken pipe instead of the answer (nginx's
/// lingering close does the same).
const DRAIN_AT_MOST: usize = 64 * 1024 * 1024;
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// The request body, up to `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut read: Vec<u8> = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if read.len() + chunk.len() > limit {
            let until = tokio::time::Instant::now() + DRAIN_FOR;
            let mut drained = 0;
            while drained < DRAIN_AT_MOST {
                match tokio::time::timeout_at(until, chunks.next()).await {
                    Ok(Some(Ok(more))) => drained += more.len(),
                    _ => break,
                }
            }
            return Err(BodyError::TooLarge);
        }
        read.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(read))
}

/// The one field the load balancer reads from a request body. The rest is skipped by the parser,
/// not built into a JSON tree: a long prompt costs a scan, not an allocation per value.
#[derive(serde::Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow)]
    model: std::borrow::Cow<'a, str>,
}

/// `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
pub async fn forward(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_key(&state, &headers)?;
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
    let model = serde_json::from_slice::<ModelOnly>(&body)
        .ok()
        .map(|m| m.model.into_owned())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request",
                "the body must be a JSON object with a \"model\"",
            )
            .with("field", "model")
        })?;
    state
        .proxy
        .forward(
            &model,
            uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
            &headers,
            body,
        )
        .await
        .map_err(|e| match e {
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
        })
}
