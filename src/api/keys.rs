//! API key endpoints: make a key (shown once), list keys, revoke one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{Admin, ApiJson};
use crate::api::state::AppState;
use crate::keys::{KeyRequest, KeyView};

#[utoipa::path(post, path = "/admin/api-keys", tag = "api-keys", security(("admin" = [])), request_body = crate::keys::KeyRequest, responses((status = 201, description = "The key's fields and, in `key`, the key itself: shown only in this answer", body = serde_json::Value), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 413, description = "Body too large", body = crate::api::openapi::ErrorBody), (status = 422, description = "Well-formed but invalid (with field)", body = crate::api::openapi::ErrorBody)))]
pub async fn create_key(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(request): ApiJson<KeyRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (view, key) = state.keys.create(request).await?;
    let mut body = serde_json::to_value(view).map_err(|e| ApiError::internal(&e))?;
    body["key"] = json!(key);
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(get, path = "/admin/api-keys", tag = "api-keys", security(("admin" = [])), responses((status = 200, description = "`{\"api_keys\": [...]}`, newest first, revoked ones included; never the keys themselves", body = serde_json::Value), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn list_keys(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let keys = state.keys.list().await?;
    Ok(Json(json!({ "api_keys": keys })))
}

#[utoipa::path(delete, path = "/admin/api-keys/{id}", tag = "api-keys", security(("admin" = [])), params(("id" = String, Path, description = "Key id")), responses((status = 200, description = "The key, revoked: refused from now on by every process", body = crate::keys::KeyView), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody), (status = 404, description = "Not found", body = crate::api::openapi::ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(state.keys.revoke(&id).await?))
}
