//! `GET /admin/cloud-events`: what the orphan sweeper did on each cloud (orphans terminated,
//! nodes whose instance vanished, orphans without an installation id kept), newest first.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::Admin;
use crate::api::state::AppState;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

#[utoipa::path(get, path = "/admin/cloud-events", tag = "launch", security(("admin" = [])), params(("limit" = Option<i64>, Query, description = "1 to 1000, default 100")), responses((status = 200, description = "What the orphan sweeper did, newest first", body = serde_json::Value), (status = 400, description = "Bad input", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn list_cloud_events(
    State(state): State<AppState>,
    _: Admin,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let events = state.store.recent_cloud_events(limit).await?;
    Ok(Json(json!({ "events": events })))
}
