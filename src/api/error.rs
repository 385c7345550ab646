//! The one JSON error envelope every API error uses:
//! `{"error": {"code": "snake_case", "message": "human sentence", ...}}`, and the mapping from
//! each domain error to its HTTP status and stable code (every `From<…> for ApiError` is here).
//! Internal details (SQL, I/O) are logged, in [`ApiError::internal`] only, never sent.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::deploy::DeployError;
use crate::fleet::FleetError;
use crate::keys::KeyError;
use crate::launch::spec::SpecError;
use crate::launch::LaunchOpError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra members of the error object (e.g. `field`).
    pub extra: Map<String, Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
            retry_after: None,
        }
    }

    /// When to try again: a `Retry-After` header and a `retry_after_s` member.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self.with("retry_after_s", seconds)
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn payload_too_large() -> ApiError {
        ApiError::payload_too_large_of(super::BODY_LIMIT)
    }

    pub fn payload_too_large_of(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than the {limit} byte limit"),
        )
    }

    /// An unexpected failure: the cause goes to the log, the client gets a plain sentence.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error while handling a request");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; the control plane log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = Map::new();
        error.insert("code".into(), Value::from(self.code));
        error.insert("message".into(), Value::from(self.message));
        error.extend(self.extra);
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> ApiError {
        let message = e.to_string();
        match e {
            FleetError::Invalid { field, .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
                    .with("field", field)
            }
            FleetError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "node_not_found", message)
            }
            FleetError::Unauthorized(_) => ApiError::unauthorized(message),
            FleetError::Terminated(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "node_terminated", message)
            }
            FleetError::NameTaken(_) => ApiError::new(StatusCode::CONFLICT, "name_taken", message),
            FleetError::Refused { code, .. } => ApiError::new(StatusCode::CONFLICT, code, message),
            FleetError::NotRegistered(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_registered", message)
            }
            FleetError::Store(e) => ApiError::from(e),
        }
    }
}

impl From<StoreError> for ApiError {
    /// A database that cannot be reached is worth retrying (503); any other store failure is
    /// internal.
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is not answering; try again shortly",
            ),
            other => ApiError::internal(&other),
        }
    }
}

impl From<SpecError> for ApiError {
    /// A launch request that cannot be launched: the field at fault, and what would work.
    fn from(e: SpecError) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code.as_str(), e.message)
            .with("field", e.field)
            .with("suggestions", e.suggestions)
    }
}

impl From<LaunchOpError> for ApiError {
    fn from(e: LaunchOpError) -> ApiError {
        match e {
            LaunchOpError::Invalid(e) => e.into(),
            LaunchOpError::IdempotencyKeyReused { key, job_id } => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                format!(
                    "Idempotency-Key {key:?} was first used for a different launch (job {job_id}); send a new key for a new launch"
                ),
            ),
            LaunchOpError::JobNotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "job_not_found",
                format!("no launch job with id {id:?}"),
            ),
            LaunchOpError::JobFinished { status, job } => ApiError::new(
                StatusCode::CONFLICT,
                "job_finished",
                format!("the job already ended ({})", status.as_str()),
            )
            .with("job", json!(job)),
            LaunchOpError::TeardownFailed(message) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "teardown_failed",
                format!(
                    "could not tear down what the node's launch created: {message}. The node is now teardown_pending: the teardown is retried until the machine is gone, and DELETE tries again at once"
                ),
            ),
            LaunchOpError::Fleet(e) => e.into(),
            LaunchOpError::Store(e) => e.into(),
            LaunchOpError::Internal(cause) => ApiError::internal(&cause),
        }
    }
}

impl From<crate::hosts::HostError> for ApiError {
    fn from(e: crate::hosts::HostError) -> ApiError {
        use crate::hosts::HostError;
        let message = e.to_string();
        match e {
            HostError::Invalid(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                e.message,
            )
            .with("field", e.field)
            .with("suggestions", e.suggestions),
            HostError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "host_not_found", message)
            }
            HostError::NameTaken(_) => ApiError::new(StatusCode::CONFLICT, "host_exists", message),
            HostError::InUse { .. } => ApiError::new(StatusCode::CONFLICT, "host_in_use", message),
            HostError::Changed(_) => ApiError::new(StatusCode::CONFLICT, "host_changed", message),
            HostError::Store(e) => e.into(),
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> ApiError {
        let message = e.to_string();
        match e {
            DeployError::Invalid(e) => e.into(),
            DeployError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "deployment_not_found", message)
            }
            DeployError::NameTaken(_) => {
                ApiError::new(StatusCode::CONFLICT, "deployment_exists", message)
            }
            DeployError::Deleting(_) => {
                ApiError::new(StatusCode::CONFLICT, "deployment_deleting", message)
            }
            DeployError::ActionNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "action_not_found", message)
            }
            DeployError::ActionNotPending { state, .. } => {
                ApiError::new(StatusCode::CONFLICT, "action_not_pending", message)
                    .with("state", state.as_str())
            }
            DeployError::NoPreviousRevision(_) => {
                ApiError::new(StatusCode::CONFLICT, "no_previous_revision", message)
            }
            DeployError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "changed_meanwhile", message)
            }
            DeployError::Store(e) => e.into(),
            DeployError::Internal(cause) => ApiError::internal(&cause),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                let detail = e.body_text();
                let detail = detail
                    .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                    .unwrap_or(&detail)
                    .to_string();
                let mut err = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("the request body is not valid: {detail}"),
                );
                if let Some(field) = field_of(&detail) {
                    err = err.with("field", field);
                }
                err
            }
            JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
                "invalid_json",
                format!("the request body is not valid JSON: {}", e.body_text()),
            ),
            JsonRejection::MissingJsonContentType(_) => ApiError::bad_request(
                "missing_content_type",
                "send the request body as JSON with `Content-Type: application/json`",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::payload_too_large()
            }
            other => ApiError::bad_request("invalid_body", other.body_text()),
        }
    }
}

/// The field a serde error is about: `missing field `x`` or a `path.to.field: ...` prefix.
fn field_of(detail: &str) -> Option<String> {
    if let Some(rest) = detail.split("missing field `").nth(1) {
        return rest.split('`').next().map(str::to_string);
    }
    if let Some(rest) = detail.split("unknown field `").nth(1) {
        return rest.split('`').next().map(str::to_string);
    }
    let (path, _) = detail.split_once(": ")?;
    let looks_like_path = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    looks_like_path.then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::field_of;

    #[test]
    fn field_is_found_in_serde_messages() {
        assert_eq!(
            field_of("missing field `health_score` at line 1 column 2").as_deref(),
            Some("health_score")
        );
        assert_eq!(
            field_of("health_score: invalid type: string \"x\", expected f64 at line 1 column 22")
                .as_deref(),
            Some("health_score")
        );
        assert_eq!(
            field_of("gpu.count: invalid value").as_deref(),
            Some("gpu.count")
        );
        assert_eq!(
            field_of("invalid type: map, expected a string").as_deref(),
            None
        );
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_503_and_a_bad_query_is_500() {
        let status = |e: sqlx::Error| ApiError::from(FleetError::Store(StoreError::from(e))).status;
        assert_eq!(
            status(sqlx::Error::PoolTimedOut),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset
            ))),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(sqlx::Error::RowNotFound),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}

impl From<KeyError> for ApiError {
    /// A `/v1` request its key does not allow (401, 403, 429), or an admin request on keys
    /// that cannot be done.
    fn from(e: KeyError) -> ApiError {
        let message = e.to_string();
        match e {
            KeyError::Missing | KeyError::Unknown => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
            }
            KeyError::Revoked { .. } => {
                ApiError::new(StatusCode::UNAUTHORIZED, "api_key_revoked", message)
            }
            KeyError::Expired { .. } => {
                ApiError::new(StatusCode::UNAUTHORIZED, "api_key_expired", message)
            }
            KeyError::ModelNotAllowed { model, .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "model_not_allowed", message)
                    .with("model", model)
            }
            KeyError::RateLimited {
                field,
                limit,
                retry_after_s,
                ..
            } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                .with("limit", field)
                .with("limit_value", limit)
                .retry_after(retry_after_s),
            KeyError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "api_key_not_found", message)
            }
            KeyError::Invalid { field, .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
                    .with("field", field)
            }
            KeyError::Store(e) => ApiError::from(e),
            KeyError::Random(e) => ApiError::internal(&e),
        }
    }
}
