//! `GET /admin/usage`: requests, tokens, GPU-hours and dollars over a period, grouped by API
//! key, model or deployment, with a series over time for charts.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;

use super::error::ApiError;
use super::extract::Admin;
use crate::api::state::AppState;
use crate::usage::{self, GroupBy, NodeCost, Period, Report};

/// The default period: the last day.
const DEFAULT_PERIOD_MS: i64 = 24 * 3_600_000;

fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", message).with("field", field)
}

#[utoipa::path(get, path = "/admin/usage", tag = "usage", security(("admin" = [])), params(("from" = Option<String>, Query, description = "RFC 3339 start (default: a day before `to`); rounded down to the minute"), ("to" = Option<String>, Query, description = "RFC 3339 end (default: now); rounded up to the minute"), ("group_by" = Option<String>, Query, description = "`key`, `model` (default) or `deployment`")), responses((status = 200, description = "`{\"from\", \"to\", \"group_by\", \"usage\": [{\"group\", \"requests\", \"prompt_tokens\", \"completion_tokens\", \"gpu_hours\", \"usd\", \"usd_per_million_tokens\", \"hourly_usd\"?, \"key_id\"?}], \"total\", \"series\": {\"bucket_s\", \"points\": [{\"start\", \"requests\", \"prompt_tokens\", \"completion_tokens\", \"usd\"}]}}`", body = serde_json::Value), (status = 400, description = "A bad `from`, `to` or `group_by` (`field` names it)", body = crate::api::openapi::ErrorBody), (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody)))]
pub async fn get_usage(
    State(state): State<AppState>,
    _: Admin,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Report>, ApiError> {
    let now = crate::clock::now_ms();
    let time = |field: &'static str| -> Result<Option<i64>, ApiError> {
        query
            .get(field)
            .map(|t| {
                crate::clock::parse_rfc3339(t).map_err(|e| {
                    invalid(
                        field,
                        format!(
                            "{field} must be an RFC 3339 time such as 2026-12-01T00:00:00Z: {e}"
                        ),
                    )
                })
            })
            .transpose()
    };
    // By default the last 24 hours to the next whole minute: 24 hourly points.
    let to = time("to")?.unwrap_or_else(|| now.div_euclid(60_000) * 60_000 + 60_000);
    let from = time("from")?.unwrap_or(to - DEFAULT_PERIOD_MS);
    let period = Period::new(from, to).map_err(|e| invalid("from", e))?;
    let group_by = match query.get("group_by") {
        None => GroupBy::Model,
        Some(g) => GroupBy::parse(g)
            .ok_or_else(|| invalid("group_by", "group_by must be key, model or deployment"))?,
    };
    let used = state.store.usage_in(period).await?;
    let buckets = state
        .store
        .usage_buckets(period, period.bucket_ms())
        .await?;
    let mut nodes = Vec::new();
    for node in state.store.load_nodes().await? {
        let cost_from = node.created_at;
        let ended = (node.status == crate::fleet::status::NodeStatus::Terminated)
            .then_some(node.updated_at);
        // A node that ran only outside the period, and runs no more, costs nothing in it.
        if ended.is_some_and(|e| e <= period.from || cost_from >= period.to) {
            continue;
        }
        let placement = match &node.launch_job_id {
            Some(id) => state
                .store
                .job(id)
                .await?
                .and_then(|job| usage::placement_price(&job.attempts)),
            None => None,
        };
        nodes.push(NodeCost::of(&node, placement));
    }
    let key_names: HashMap<String, String> = state
        .store
        .api_keys()
        .await?
        .into_iter()
        .map(|k| (k.id, k.name))
        .collect();
    Ok(Json(usage::report(
        period, group_by, &used, &buckets, &nodes, &key_names, now,
    )))
}
