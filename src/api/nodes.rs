//! Node endpoints: admin CRUD and the two agent endpoints (register, heartbeat). Thin: parse,
//! call the fleet, shape the answer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::Stream;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::extract::{Admin, ApiJson, NodeBearer};
use super::sse::{async_stream, event};
use crate::api::state::AppState;
use crate::fleet::events::NodeEvent;
use crate::fleet::node::{HeartbeatReport, NewNode, Node, Registration};
use crate::fleet::FleetError;
use crate::launch;

const RECENT_EVENTS: i64 = 50;

#[derive(Serialize)]
struct NodeWithEvents {
    #[serde(flatten)]
    node: Node,
    events: Vec<NodeEvent>,
}

#[utoipa::path(post, path = "/admin/nodes", tag = "nodes", security(("admin" = [])), request_body = crate::fleet::node::NewNode, responses((status = 201, description = "The node, its one-time `token` and `agent_env`", body = serde_json::Value), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 409, description = "Conflict with the current state", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body too large", body = crate::api::openapi::ErrorBody), (status = 422, description = "Well-formed but invalid (with field and suggestions)", body = crate::api::openapi::ErrorBody)))]
pub async fn create_node(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(new): ApiJson<NewNode>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (node, token) = state.fleet.create_node(new, None).await?;
    let mut body = serde_json::to_value(&node).map_err(|e| ApiError::internal(&e))?;
    body["node_id"] = json!(node.id);
    body["token"] = json!(token);
    body["agent_env"] = json!({
        "SKYLAUNCH_CONTROL_PLANE_URL": state.public_url,
        "SKYLAUNCH_NODE_ID": node.id,
    });
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(get, path = "/admin/nodes", tag = "nodes", security(("admin" = [])), responses((status = 200, description = "`{\"nodes\": [...]}`", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn list_nodes(State(state): State<AppState>, _: Admin) -> Json<Value> {
    Json(json!({ "nodes": state.fleet.list().await }))
}

#[utoipa::path(get, path = "/admin/nodes/{id}", tag = "nodes", security(("admin" = [])), params(("id" = String, Path, description = "Node id")), responses((status = 200, description = "The node with its recent events", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody)))]
pub async fn get_node(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node = state.fleet.get(&id).await?;
    let events = state.fleet.events(&id, RECENT_EVENTS).await?;
    Ok(Json(json!(NodeWithEvents { node, events })))
}

#[utoipa::path(post, path = "/admin/nodes/{id}/drain", tag = "nodes", security(("admin" = [])), params(("id" = String, Path, description = "Node id")), responses((status = 200, description = "The node, now draining", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "Conflict with the current state", body = crate::api::openapi::ErrorBody)))]
pub async fn drain_node(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(state.fleet.drain(&id, "drained by an admin").await?))
}

/// Terminates a node. For a node skylaunch launched, its launch is cancelled (if still running)
/// or what it created is torn down first, so nothing keeps billing.
#[utoipa::path(delete, path = "/admin/nodes/{id}", tag = "nodes", security(("admin" = [])), params(("id" = String, Path, description = "Node id")), responses((status = 200, description = "The node, terminated (a launched node is torn down first)", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "Conflict with the current state", body = crate::api::openapi::ErrorBody)))]
pub async fn delete_node(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(
        launch::delete_launched_node(&state.runner, &id).await?,
    ))
}

/// The agent endpoints' rate limits, and a log line (never the token) for a refused token.
///
/// A node id is checked for shape (a UUID) and existence before any bucket is keyed on it, so
/// junk ids make no buckets. The per-node bucket is kept per node and per *right or wrong*
/// token: requests with a wrong token drain a bucket of their own, never the one of the node's
/// real agent, and there are at most two per node.
async fn agent_limit(
    state: &AppState,
    id: &str,
    token: &str,
    peer: SocketAddr,
) -> Result<(), ApiError> {
    let limited = |limited: crate::api::limits::Limited, key: &str| {
        let what = limited.what.replace(key, id);
        let seconds = limited.retry_after.as_secs_f64().ceil().max(1.0);
        tracing::warn!(node_id = %id, source = %peer.ip(), limit = %what, "agent request rate limited");
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many {what}; retry in {seconds} s"),
        )
        .retry_after(seconds as u64)
    };
    state
        .agent_limits
        .check_source(peer.ip())
        .map_err(|l| limited(l, id))?;
    if uuid::Uuid::parse_str(id).is_err() {
        let shown: String = id.chars().take(40).collect();
        tracing::debug!(node_id = %shown, source = %peer.ip(), "agent request for a malformed node id");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "node_not_found",
            "no node has that id (node ids are UUIDs)",
        ));
    }
    let right = state.fleet.token_matches(id, token).await?;
    let key = if right {
        id.to_string()
    } else {
        format!("{id}/wrong-token")
    };
    state
        .agent_limits
        .check_node(&key)
        .map_err(|l| limited(l, &key))
}

fn log_refused<T>(
    result: Result<T, FleetError>,
    id: &str,
    peer: SocketAddr,
    what: &str,
) -> Result<T, FleetError> {
    if let Err(FleetError::Unauthorized(_)) = &result {
        tracing::warn!(node_id = %id, source = %peer.ip(), endpoint = what, "agent request with a wrong node token refused");
    }
    result
}

#[utoipa::path(post, path = "/admin/nodes/register", tag = "agent", security(("node" = [])), params(("node_id" = String, Query, description = "The node registering")), request_body = crate::fleet::node::Registration, responses((status = 200, description = "Registered: status, desired state, heartbeat interval", body = serde_json::Value), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "Conflict with the current state", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body too large", body = crate::api::openapi::ErrorBody), (status = 422, description = "Well-formed but invalid (with field and suggestions)", body = crate::api::openapi::ErrorBody), (status = 429, description = "Rate limited (with retry_after_s)", body = crate::api::openapi::ErrorBody)))]
pub async fn register_node(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    NodeBearer(token): NodeBearer,
    Query(query): Query<HashMap<String, String>>,
    ApiJson(reg): ApiJson<Registration>,
) -> Result<Json<Value>, ApiError> {
    let Some(id) = query.get("node_id").filter(|id| !id.is_empty()) else {
        return Err(ApiError::bad_request(
            "missing_node_id",
            "the `node_id` query parameter is required: POST /admin/nodes/register?node_id=<id>",
        ));
    };
    agent_limit(&state, id, &token, peer).await?;
    let ack = log_refused(
        state
            .fleet
            .register(id, &token, reg, &state.agent_origin(peer.ip()))
            .await,
        id,
        peer,
        "register",
    )?;
    Ok(Json(json!({
        "status": "registered",
        "node_id": ack.node_id,
        "node_status": ack.status,
        "desired": ack.desired,
        "heartbeat_interval_s": ack.heartbeat_interval_s,
    })))
}

#[utoipa::path(post, path = "/admin/nodes/{id}/heartbeat", tag = "agent", security(("node" = [])), params(("id" = String, Path, description = "Node id")), request_body = crate::fleet::node::HeartbeatReport, responses((status = 200, description = "Accepted: status, desired state, heartbeat interval", body = serde_json::Value), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "Conflict with the current state", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body too large", body = crate::api::openapi::ErrorBody), (status = 422, description = "Well-formed but invalid (with field and suggestions)", body = crate::api::openapi::ErrorBody), (status = 429, description = "Rate limited (with retry_after_s)", body = crate::api::openapi::ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    NodeBearer(token): NodeBearer,
    Path(id): Path<String>,
    ApiJson(report): ApiJson<HeartbeatReport>,
) -> Result<Json<crate::fleet::AgentAck>, ApiError> {
    agent_limit(&state, &id, &token, peer).await?;
    let ack = log_refused(
        state.fleet.heartbeat(&id, &token, report).await,
        &id,
        peer,
        "heartbeat",
    )?;
    Ok(Json(ack))
}

/// How long node changes are gathered before they go out together on `/admin/nodes/events`.
const FEED_BATCH: Duration = Duration::from_millis(500);

/// `GET /admin/nodes/events`: server-sent events for live fleet views. First `snapshot` with
/// every node, then `nodes` with the nodes that changed, gathered for half a second so a busy
/// fleet's heartbeats arrive as a few batches rather than a flood. A subscriber that falls
/// behind gets a fresh `snapshot`.
#[utoipa::path(get, path = "/admin/nodes/events", tag = "nodes", security(("admin" = [])), responses((status = 200, description = "Server-sent events: `snapshot`, then `nodes` batches", content_type = "text/event-stream"), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn node_events(
    State(state): State<AppState>,
    _: Admin,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribe before the snapshot so no change between the two is missed.
    let mut rx = state.node_feed.subscribe();
    let fleet = state.fleet.clone();
    let stream = async_stream(state.stopping.clone(), move |tx| async move {
        let snapshot = |nodes: Vec<Node>| event("snapshot", &json!({ "nodes": nodes }));
        if tx.send(snapshot(fleet.list().await)).await.is_err() {
            return;
        }
        loop {
            let mut changed: HashMap<String, Arc<Node>> = HashMap::new();
            let mut behind = false;
            match rx.recv().await {
                Ok(node) => {
                    changed.insert(node.id.clone(), node);
                }
                Err(RecvError::Lagged(_)) => behind = true,
                Err(RecvError::Closed) => return,
            }
            let until = tokio::time::Instant::now() + FEED_BATCH;
            while !behind {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Ok(node)) => {
                        changed.insert(node.id.clone(), node);
                    }
                    Ok(Err(RecvError::Lagged(_))) => behind = true,
                    Ok(Err(RecvError::Closed)) => return,
                    Err(_) => break,
                }
            }
            let sent = if behind {
                rx = rx.resubscribe();
                tx.send(snapshot(fleet.list().await)).await
            } else {
                let nodes: Vec<&Node> = changed.values().map(|n| n.as_ref()).collect();
                tx.send(event("nodes", &json!({ "nodes": nodes }))).await
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
