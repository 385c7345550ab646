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
use crate::clock::now_ms;
use crate::fleet::node::NewNode;
use crate::fleet::FleetError;
use crate::launch::events::JobEventKind;
use crate::launch::failure::ErrorCode;
use crate::launch::job::{Job, JobStatus};
use crate::launch::spec::{LaunchRequest, SpecError};
use crate::launch::task::{self, NodeIdentity};
use crate::store::StoreError;

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code_name(e.code),
            e.message,
        )
        .with("field", e.field)
        .with("suggestions", e.suggestions)
    }
}

fn code_name(code: ErrorCode) -> &'static str {
    code.as_str()
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::from(FleetError::Store(e))
}

fn job_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "job_not_found",
        format!("no launch job with id {id:?}"),
    )
}

/// A node name from the model and the job id: `llama-3.1-8b-instruct-5f3c2a`.
fn default_name(model: &str, job_id: &str) -> String {
    let base: String = model
        .rsplit('/')
        .next()
        .unwrap_or("node")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let base = base.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let base = if base.is_empty() { "node" } else { base };
    format!("{base}-{}", &job_id.replace('-', "")[..6])
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
    if let Some(key) = &key {
        if let Some(first) = state
            .store
            .job_by_idempotency_key(key)
            .await
            .map_err(store_error)?
        {
            return same_request(key, first, &request);
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let spec = request.validate(&default_name(&request.model, &id))?;
    match state.runner.provider(spec.provider.as_str()) {
        Some(provider) => provider.check(&spec)?,
        None => {
            return Err(SpecError {
                code: ErrorCode::InvalidRequest,
                field: "provider",
                message: format!(
                    "provider {:?} is not in this build of skylaunch (it was compiled without the \"{}\" feature)",
                    spec.provider.as_str(),
                    spec.provider.as_str()
                ),
                suggestions: vec!["skypilot".into(), "local".into()],
            }
            .into())
        }
    }
    let (node, _unused_token) = state
        .fleet
        .create_node(
            NewNode {
                name: spec.name.clone(),
                model_name: spec.model.clone(),
                endpoint_url: None,
                provider: Some(spec.provider.as_str().to_string()),
                labels: None,
            },
            Some(id.clone()),
        )
        .await?;
    let job = Job::queued(id.clone(), spec, Some(node.id.clone()), now_ms());
    let request_json = serde_json::to_string(&request).map_err(|e| ApiError::internal(&e))?;
    if let Err(e) = state
        .store
        .insert_job(&job, &request_json, key.as_deref())
        .await
    {
        // The node was made for this job only.
        let _ = state
            .fleet
            .terminate(&node.id, "its launch job could not be stored")
            .await;
        let duplicate = matches!(e, StoreError::Duplicate(_));
        if let (true, Some(key)) = (duplicate, &key) {
            if let Some(first) = state
                .store
                .job_by_idempotency_key(key)
                .await
                .map_err(store_error)?
            {
                return same_request(key, first, &request);
            }
        }
        return Err(store_error(e));
    }
    tracing::info!(job_id = %job.id, node_id = %node.id, provider = job.provider.as_str(), model = %job.spec.model, "launch job queued");
    state.runner.wake();
    Ok((StatusCode::ACCEPTED, Json(json!(job))))
}

/// A repeat with an `Idempotency-Key` gets the first job, if it asks for the same launch; the
/// same key with another request is a mistake the caller should hear about.
fn same_request(
    key: &str,
    (job, first_request): (Job, String),
    request: &LaunchRequest,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let first: Value = serde_json::from_str(&first_request).map_err(|e| ApiError::internal(&e))?;
    let now = serde_json::to_value(request).map_err(|e| ApiError::internal(&e))?;
    if first != now {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!(
                "Idempotency-Key {key:?} was first used for a different launch (job {}); send a new key for a new launch",
                job.id
            ),
        ));
    }
    Ok((StatusCode::ACCEPTED, Json(json!(job))))
}

#[utoipa::path(get, path = "/admin/launch-jobs", tag = "launch", security(("admin" = [])), responses((status = 200, description = "`{\"jobs\": [...]}`, newest first", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn list_jobs(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let jobs = state.store.jobs(500).await.map_err(store_error)?;
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
        .await
        .map_err(store_error)?
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
    if state.store.job(&id).await.map_err(store_error)?.is_none() {
        return Err(job_not_found(&id));
    }
    let after = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let lines = state
        .store
        .job_logs(&id, after, 10_000)
        .await
        .map_err(store_error)?;
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
        .await
        .map_err(store_error)?
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
    let status = state
        .store
        .request_cancel(&id, now_ms())
        .await
        .map_err(store_error)?
        .ok_or_else(|| job_not_found(&id))?;
    match status {
        s if s.is_terminal() => {
            let job = state
                .store
                .job(&id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| job_not_found(&id))?;
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_finished",
                format!("the job already ended ({})", s.as_str()),
            )
            .with("job", json!(job)));
        }
        JobStatus::Queued => {
            let mut job = state
                .store
                .job(&id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| job_not_found(&id))?;
            job.finish_unsuccessfully(
                JobStatus::Cancelled,
                crate::launch::runner::cancelled(),
                now_ms(),
            );
            job.updated_at = now_ms();
            if state
                .store
                .finish_queued_job(&job)
                .await
                .map_err(store_error)?
            {
                if let Some(node_id) = &job.node_id {
                    let _ = state
                        .fleet
                        .terminate(node_id, "its launch was cancelled before it started")
                        .await;
                }
                state.events.send(&id, JobEventKind::Job, json!(job));
            } else {
                // A runner claimed it meanwhile; the cancel flag stops it.
                state.runner.signal_cancel(&id);
            }
        }
        _ => state.runner.signal_cancel(&id),
    }
    let job = state
        .store
        .job(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| job_not_found(&id))?;
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
    let template = task::template(&spec.template)
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
