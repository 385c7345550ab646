//! Deployment endpoints: create, list, get, replace the spec (a rolling update when what
//! replicas run changed), scale, retry after a back-off, roll back, delete; and their actions,
//! with approve and reject for the guarded ones.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{Admin, ApiJson};
use crate::api::state::AppState;
use crate::deploy::model::{Action, ActionState};
use crate::deploy::spec::DeploymentRequest;
use crate::deploy::DeploymentView;

/// `POST /admin/deployments/<name>/scale` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub replicas: u32,
}

#[utoipa::path(post, path = "/admin/deployments", tag = "deployments", security(("admin" = [])), request_body = crate::deploy::spec::DeploymentRequest, responses((status = 201, description = "The deployment; its replicas are being launched", body = serde_json::Value), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 409, description = "A deployment with this name exists", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body too large", body = crate::api::openapi::ErrorBody), (status = 422, description = "Well-formed but invalid (with field and suggestions)", body = crate::api::openapi::ErrorBody)))]
pub async fn create_deployment(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(request): ApiJson<DeploymentRequest>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    let view = state.deployments.create(request).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/admin/deployments", tag = "deployments", security(("admin" = [])), responses((status = 200, description = "`{\"deployments\": [...]}`, by name", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn list_deployments(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Value>, ApiError> {
    let deployments = state.deployments.list().await?;
    Ok(Json(json!({ "deployments": deployments })))
}

#[utoipa::path(get, path = "/admin/deployments/{name}", tag = "deployments", security(("admin" = [])), params(("name" = String, Path, description = "Deployment name")), responses((status = 200, description = "The deployment: status, replica counts, nodes, hourly cost", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody)))]
pub async fn get_deployment(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    Ok(Json(state.deployments.view(&name).await?))
}

#[utoipa::path(put, path = "/admin/deployments/{name}", tag = "deployments", security(("admin" = [])), params(("name" = String, Path, description = "Deployment name")), request_body = crate::deploy::spec::DeploymentRequest, responses((status = 200, description = "The deployment; a new revision when what replicas run changed", body = serde_json::Value), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "Being deleted, or changed meanwhile", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body too large", body = crate::api::openapi::ErrorBody), (status = 422, description = "Well-formed but invalid (with field and suggestions)", body = crate::api::openapi::ErrorBody)))]
pub async fn update_deployment(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<DeploymentRequest>,
) -> Result<Json<DeploymentView>, ApiError> {
    Ok(Json(state.deployments.update(&name, request).await?))
}

#[utoipa::path(post, path = "/admin/deployments/{name}/scale", tag = "deployments", security(("admin" = [])), params(("name" = String, Path, description = "Deployment name")), request_body = ScaleRequest, responses((status = 200, description = "The deployment", body = serde_json::Value), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "Being deleted, or changed meanwhile", body = crate::api::openapi::ErrorBody), (status = 422, description = "Well-formed but invalid", body = crate::api::openapi::ErrorBody)))]
pub async fn scale_deployment(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<ScaleRequest>,
) -> Result<Json<DeploymentView>, ApiError> {
    Ok(Json(
        state.deployments.scale(&name, request.replicas).await?,
    ))
}

#[utoipa::path(post, path = "/admin/deployments/{name}/retry", tag = "deployments", security(("admin" = [])), params(("name" = String, Path, description = "Deployment name")), responses((status = 200, description = "The deployment, its back-off cleared", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "Being deleted", body = crate::api::openapi::ErrorBody)))]
pub async fn retry_deployment(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    Ok(Json(state.deployments.retry(&name).await?))
}

#[utoipa::path(post, path = "/admin/deployments/{name}/rollback", tag = "deployments", security(("admin" = [])), params(("name" = String, Path, description = "Deployment name")), responses((status = 200, description = "The deployment, at a new revision that runs what the previous one ran", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "No earlier revision, being deleted, or changed meanwhile", body = crate::api::openapi::ErrorBody)))]
pub async fn rollback_deployment(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    Ok(Json(state.deployments.rollback(&name).await?))
}

#[utoipa::path(delete, path = "/admin/deployments/{name}", tag = "deployments", security(("admin" = [])), params(("name" = String, Path, description = "Deployment name")), responses((status = 202, description = "The deployment, deleting: its replicas are drained and terminated, then it disappears", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody)))]
pub async fn delete_deployment(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    let view = state.deployments.delete(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

#[utoipa::path(get, path = "/admin/deployments/{name}/actions", tag = "deployments", security(("admin" = [])), params(("name" = String, Path, description = "Deployment name")), responses((status = 200, description = "`{\"actions\": [...]}`, newest first", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody)))]
pub async fn deployment_actions(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let actions = state.deployments.actions(&name).await?;
    Ok(Json(json!({ "actions": actions })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ActionsQuery {
    /// Only actions in this state (`pending`, `approved`, `running`, `completed`, `failed`,
    /// `rejected`, `cancelled`).
    pub state: Option<String>,
}

#[utoipa::path(get, path = "/admin/actions", tag = "deployments", security(("admin" = [])), params(ActionsQuery), responses((status = 200, description = "`{\"actions\": [...]}` of every deployment, newest first", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 422, description = "Unknown state", body = crate::api::openapi::ErrorBody)))]
pub async fn list_actions(
    State(state): State<AppState>,
    _: Admin,
    Query(query): Query<ActionsQuery>,
) -> Result<Json<Value>, ApiError> {
    let wanted = match query.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(ActionState::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!(
                    "unknown action state {s:?}; use one of {}",
                    ActionState::ALL.map(ActionState::as_str).join(", ")
                ),
            )
            .with("field", "state")
        })?),
    };
    let actions = state.deployments.actions_in_state(wanted).await?;
    Ok(Json(json!({ "actions": actions })))
}

#[utoipa::path(post, path = "/admin/actions/{id}/approve", tag = "deployments", security(("admin" = [])), params(("id" = String, Path, description = "Action id")), responses((status = 200, description = "The action, approved: it runs now", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "Not pending", body = crate::api::openapi::ErrorBody)))]
pub async fn approve_action(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Action>, ApiError> {
    Ok(Json(state.deployments.approve(&id).await?))
}

#[utoipa::path(post, path = "/admin/actions/{id}/reject", tag = "deployments", security(("admin" = [])), params(("id" = String, Path, description = "Action id")), responses((status = 200, description = "The action, rejected", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody), (status = 409, description = "Not pending", body = crate::api::openapi::ErrorBody)))]
pub async fn reject_action(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Action>, ApiError> {
    Ok(Json(state.deployments.reject(&id).await?))
}
