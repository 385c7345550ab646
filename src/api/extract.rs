//! Request extractors that answer in our JSON error envelope: the JSON body, the admin token and
//! a node's bearer token.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::Json;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::api::state::AppState;
use crate::fleet::token;

/// A JSON body whose rejections become [`ApiError`]s naming the bad field.
pub struct ApiJson<T>(pub T);

/// A route's own, smaller limit on the JSON body [`ApiJson`] reads (a request extension).
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let limit = parts
            .extensions
            .get::<BodyLimit>()
            .map_or(super::BODY_LIMIT, |l| l.0);
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| ApiError::payload_too_large_of(limit))?;
        if has_nul_escape(&bytes) {
            // PostgreSQL cannot store NUL in text; no field of ours has a use for it.
            return Err(ApiError::bad_request(
                "invalid_character",
                "text in the request contains a NUL character (\\u0000), which no field accepts",
            ));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// Whether JSON text has `\u0000` in a string (raw NUL bytes are not valid JSON anyway).
fn has_nul_escape(json: &[u8]) -> bool {
    json.windows(6)
        .any(|w| w[0] == b'\\' && w[1] == b'u' && &w[2..] == b"0000")
}

/// Proof that the request carried the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let given = bearer(&parts.headers).or_else(|| {
            parts
                .headers
                .get("x-admin-token")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        });
        match given {
            Some(given) if token::secrets_equal(given, &state.admin_token) => Ok(Admin),
            Some(_) => {
                // Who tried, never what they sent.
                let source = parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.ip().to_string())
                    .unwrap_or_default();
                tracing::warn!(path = %parts.uri.path(), %source, "request with a wrong admin token refused");
                Err(ApiError::unauthorized("the admin token is not valid"))
            }
            None => Err(ApiError::unauthorized(
                "this endpoint needs the admin token: send `Authorization: Bearer <token>` or `X-Admin-Token: <token>`",
            )),
        }
    }
}

/// The bearer token of an agent request; which node it is checked against is the handler's job.
pub struct NodeBearer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for NodeBearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        bearer(&parts.headers)
            .map(|t| NodeBearer(t.to_string()))
            .ok_or_else(|| {
                ApiError::unauthorized("agent endpoints need the node's token: send `Authorization: Bearer <node token>`")
            })
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
