//! Launch-job endpoints: create (validated before anything is queued, idempotent with
//! `Idempotency-Key`), list, get, logs, live events (SSE), cancel, and the task preview.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::Stream;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::extract::{Admin, ApiJson};
use super::sse::{async_stream, event};
use crate::api::state::AppState;
use crate::launch::events::JobEventKind;
use crate::launch::job::Job;
use crate::launch::operations::default_name;
use crate::launch::providers::skypilot::task;
use crate::launch::spec::LaunchRequest;
use crate::launch::template::{self, NodeIdentity};
use crate::launch::{self, LaunchOpError};

fn job_not_found(id: &str) -> ApiError {
    ApiError::from(LaunchOpError::JobNotFound(id.to_string()))
}

#[utoipa::path(post, path = "/admin/launch-jobs", tag = "launch", security(("admin" = [])), params(("Idempotency-Key" = Option<String>, Header, description = "Repeats with the same key return the first job; the same key with another request is 409 `idempotency_key_reused`")), request_body = crate::launch::spec::LaunchRequest, responses((status = 202, description = "The queued job", body = serde_json::Value), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 409, description = "Conflict with the current state", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body too large", body = crate::api::openapi::ErrorBody), (status = 422, description = "Well-formed but invalid (with field and suggestions)", body = crate::api::openapi::ErrorBody)))]
pub async fn create_job(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    ApiJson(request): ApiJson<LaunchRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::trim).map(str::to_string))
        .transpose()
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be printable ASCII",
            )
        })?
        .filter(|k| !k.is_empty());
    if key.as_ref().is_some_and(|k| k.len() > 200) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key is longer than 200 characters",
        ));
    }
    let job = launch::submit(&state.runner, &request, key.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!(job))))
}

#[utoipa::path(get, path = "/admin/launch-jobs", tag = "launch", security(("admin" = [])), responses((status = 200, description = "`{\"jobs\": [...]}`, newest first", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn list_jobs(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let jobs = state.store.jobs(500).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

#[utoipa::path(get, path = "/admin/launch-jobs/{id}", tag = "launch", security(("admin" = [])), params(("id" = String, Path, description = "Launch job id")), responses((status = 200, description = "The job: stages, attempts, error", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    state
        .store
        .job(&id)
        .await?
        .map(Json)
        .ok_or_else(|| job_not_found(&id))
}

/// Raw provider output as text (`?format=json` for structured lines, `?after=<line id>` to page).
#[utoipa::path(get, path = "/admin/launch-jobs/{id}/logs", tag = "launch", security(("admin" = [])), params(("id" = String, Path, description = "Launch job id"), ("format" = Option<String>, Query, description = "`json` for structured lines"), ("after" = Option<i64>, Query, description = "Only lines after this line id")), responses((status = 200, description = "Provider output as text, or `{\"lines\": [...]}`", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody)))]
pub async fn job_logs(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if state.store.job(&id).await?.is_none() {
        return Err(job_not_found(&id));
    }
    let after = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let lines = state.store.job_logs(&id, after, 10_000).await?;
    if query.get("format").map(String::as_str) == Some("json") {
        return Ok(Json(json!({ "lines": lines })).into_response());
    }
    let text: String = lines
        .iter()
        .map(|l| format!("[{}] {}\n", l.stream, l.line))
        .collect();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// Live stage changes, attempts and log lines, starting with the job as it is and ending with
/// the final job.
#[utoipa::path(get, path = "/admin/launch-jobs/{id}/events", tag = "launch", security(("admin" = [])), params(("id" = String, Path, description = "Launch job id")), responses((status = 200, description = "Server-sent events: `job`, `stage`, `attempt`, `log`, ending with the final `job`", content_type = "text/event-stream"), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody)))]
pub async fn job_events(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before reading the snapshot so nothing between the two is missed.
    let mut rx = state.events.subscribe();
    let job = state
        .store
        .job(&id)
        .await?
        .ok_or_else(|| job_not_found(&id))?;
    let store = state.store.clone();
    let runner = state.runner.clone();
    let stream = async_stream(state.stopping.clone(), move |tx| async move {
        let terminal = job.status.is_terminal();
        let mut last_update = job.updated_at;
        if tx.send(event("job", &json!(job))).await.is_err() || terminal {
            return;
        }
        // Another control-plane process may be running this job: its live events stay there, so
        // the stored job is checked every second and sent whenever it changed.
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                r = rx.recv() => r,
                _ = poll.tick() => {
                    if runner.runs(&id) {
                        continue;
                    }
                    let Ok(Some(job)) = store.job(&id).await else {
                        continue;
                    };
                    if job.updated_at == last_update && !job.status.is_terminal() {
                        continue;
                    }
                    last_update = job.updated_at;
                    let terminal = job.status.is_terminal();
                    if tx.send(event("job", &json!(job))).await.is_err() || terminal {
                        return;
                    }
                    continue;
                }
            };
            match received {
                Ok(ev) if ev.job_id == id => {
                    let done = ev.kind == JobEventKind::Job;
                    if tx.send(event(ev.kind.as_str(), &ev.data)).await.is_err() || done {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    // Too far behind: resend the whole job, which holds every stage and attempt.
                    let Ok(Some(job)) = store.job(&id).await else {
                        return;
                    };
                    let terminal = job.status.is_terminal();
                    if tx.send(event("job", &json!(job))).await.is_err() || terminal {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[utoipa::path(post, path = "/admin/launch-jobs/{id}/cancel", tag = "launch", security(("admin" = [])), params(("id" = String, Path, description = "Launch job id")), responses((status = 202, description = "Cancel requested; the job", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "Conflict with the current state", body = crate::api::openapi::ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let job = launch::cancel(&state.runner, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!(job))))
}

/// The task a launch would run, without launching (the node token shown as `<secret>`).
#[utoipa::path(post, path = "/admin/task-yaml/preview", tag = "launch", security(("admin" = [])), request_body = crate::launch::spec::LaunchRequest, responses((status = 200, description = "The SkyPilot task a launch would run", body = serde_json::Value), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body too large", body = crate::api::openapi::ErrorBody), (status = 422, description = "Well-formed but invalid (with field and suggestions)", body = crate::api::openapi::ErrorBody)))]
pub async fn preview_task(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(request): ApiJson<LaunchRequest>,
) -> Result<Json<Value>, ApiError> {
    let spec = request.validate(&default_name(&request.model, "000000-preview"))?;
    let template = template::template(&spec.template)
        .ok_or_else(|| ApiError::internal(&"embedded template missing"))?;
    let identity = NodeIdentity {
        control_plane_url: &state.public_url,
        agent_url: &state.agent_url,
        node_id: "<assigned at launch>",
        node_token: "<secret>",
        model_key: "<secret>",
    };
    let rendered = task::render(&spec, &template, "sl-preview", &identity);
    let yaml = task::to_yaml(&task::masked(&rendered, &spec));
    Ok(Json(json!({"task_yaml": yaml, "spec": spec.masked()})))
}

/// The agent binary that sits next to this control plane, for VMs to download in their setup.
#[utoipa::path(get, path = "/downloads/skylaunch-agent", tag = "agent", responses((status = 200, description = "The agent binary", content_type = "application/octet-stream"), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody)))]
pub async fn download_agent(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Streamed from the file, not read into memory: a download holds 64 KiB at a time, however
    // many run at once.
    let missing = |_| {
        ApiError::not_found("this control plane has no skylaunch-agent binary next to it; build the workspace or set SKYLAUNCH_AGENT_BIN")
    };
    let file = tokio::fs::File::open(&state.agent_bin)
        .await
        .map_err(missing)?;
    let length = file.metadata().await.map_err(missing)?.len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}
