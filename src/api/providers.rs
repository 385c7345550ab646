//! `GET /admin/providers`: whether each provider can launch now, and if not, why and what to do.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::Admin;
use crate::api::state::AppState;

/// `GET /admin/providers[?refresh=true]`: every provider's verdict as known now. A check that
/// asks a cloud or runs `sky check` is never waited for: its last verdict is given (`checking`
/// while a new one runs), and one starts when none is known, the last is older than ten minutes,
/// or `refresh=true` asks.
#[utoipa::path(get, path = "/admin/providers", tag = "launch", security(("admin" = [])), params(("refresh" = Option<bool>, Query, description = "`true`: check the clouds again now (in the background; poll until no provider is `checking`)")), responses((status = 200, description = "`{\"providers\": [{\"provider\", \"ready\", \"summary\", \"checks\": [{\"name\", \"ok\", \"detail\"}], \"details\", \"error\": {\"code\", \"title\", \"message\", \"suggestions\"} | null, \"checked_at\", \"checking\"}]}`", body = serde_json::Value), (status = 400, description = "`refresh` is not true or false", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn list_providers(
    State(state): State<AppState>,
    _: Admin,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let refresh = match query.get("refresh").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(
                ApiError::bad_request("invalid_query", "refresh must be true or false")
                    .with("field", "refresh"),
            )
        }
    };
    let providers = state.readiness.current(refresh).await;
    Ok(Json(json!({ "providers": providers })))
}
