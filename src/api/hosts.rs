//! SSH host endpoints: add a host (probed in the background), list, show with events, probe
//! again, remove. Credentials go in and never come out.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{Admin, ApiJson};
use crate::api::state::AppState;
use crate::hosts::{HostRequest, HostView};

#[utoipa::path(post, path = "/admin/hosts", tag = "hosts", security(("admin" = [])), request_body = crate::hosts::HostRequest, responses((status = 201, description = "The host, `probing`: skylaunch connects, checks its host key and probes it in the background", body = crate::hosts::HostView), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 409, description = "A host with this name exists", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body too large", body = crate::api::openapi::ErrorBody), (status = 422, description = "Well-formed but invalid (with field)", body = crate::api::openapi::ErrorBody)))]
pub async fn create_host(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(request): ApiJson<HostRequest>,
) -> Result<(StatusCode, Json<HostView>), ApiError> {
    let view = state.hosts.create(request).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/admin/hosts", tag = "hosts", security(("admin" = [])), responses((status = 200, description = "`{\"hosts\": [...]}`, by name", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn list_hosts(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let hosts = state.hosts.list().await?;
    Ok(Json(json!({ "hosts": hosts })))
}

#[utoipa::path(get, path = "/admin/hosts/{id}", tag = "hosts", security(("admin" = [])), params(("id" = String, Path, description = "Host id or name")), responses((status = 200, description = "The host with its newest events", body = crate::hosts::HostView), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody)))]
pub async fn get_host(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<HostView>, ApiError> {
    Ok(Json(state.hosts.view(&id).await?))
}

#[utoipa::path(post, path = "/admin/hosts/{id}/probe", tag = "hosts", security(("admin" = [])), params(("id" = String, Path, description = "Host id or name")), responses((status = 202, description = "The host, `probing` again", body = crate::hosts::HostView), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "A launch holds the host", body = crate::api::openapi::ErrorBody)))]
pub async fn probe_host(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<HostView>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(state.hosts.reprobe(&id).await?)))
}

#[utoipa::path(delete, path = "/admin/hosts/{id}", tag = "hosts", security(("admin" = [])), params(("id" = String, Path, description = "Host id or name")), responses((status = 204, description = "Removed"), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "A launch holds the host", body = crate::api::openapi::ErrorBody)))]
pub async fn delete_host(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.hosts.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
