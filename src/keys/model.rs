//! An API key as stored and shown, the request that makes one, and how a key is made and
//! recognised (its SHA-256; the key itself is shown once and never stored).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every key starts with this, so a leaked one is recognisable (secret scanners, logs).
pub const KEY_PREFIX: &str = "sk-sl-";
/// How many characters of a key are kept to tell keys apart: the prefix and six more.
const SHOWN_CHARS: usize = KEY_PREFIX.len() + 6;

const MAX_NAME: usize = 100;
const MAX_MODELS: usize = 100;
const MAX_MODEL: usize = 256;
const MAX_REQUESTS_PER_MINUTE: u64 = 10_000_000;
const MAX_TOKENS_PER_MINUTE: u64 = 10_000_000_000;

/// A stored key.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// The key's first characters.
    pub prefix: String,
    /// The models it may use; `None` for all.
    pub models: Option<Vec<String>>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

impl ApiKey {
    /// Whether it may be used for `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }

    pub fn status(&self, now: i64) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    pub fn view(&self, now: i64) -> KeyView {
        KeyView {
            id: self.id.clone(),
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            models: self.models.clone(),
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            created_at: self.created_at,
            status: self.status(now),
            requests_last_minute: 0,
            tokens_last_minute: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

/// A key as the admin API shows it: never the key, never its hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// The key's first characters, to tell keys apart (`sk-sl-AbC123…`).
    pub prefix: String,
    /// The models it may use; null for all.
    pub models: Option<Vec<String>>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    #[serde(with = "crate::clock::serde_opt_rfc3339")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<i64>,
    #[serde(with = "crate::clock::serde_opt_rfc3339")]
    #[schema(value_type = Option<String>)]
    pub revoked_at: Option<i64>,
    #[serde(with = "crate::clock::serde_rfc3339")]
    #[schema(value_type = String)]
    pub created_at: i64,
    pub status: KeyStatus,
    /// Requests over the sliding minute up to now, every process together (the others' as
    /// last read, at most about two seconds late).
    pub requests_last_minute: u64,
    /// Tokens over the sliding minute up to now, every process together.
    pub tokens_last_minute: u64,
}

/// `POST /admin/api-keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// Who or what the key is for (1 to 100 characters).
    pub name: String,
    /// The models it may use (omit or null for all).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Requests per minute, over a sliding minute (omit for no limit).
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Prompt and completion tokens per minute, over a sliding minute (omit for no limit).
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// RFC 3339 time after which the key is refused (omit for never).
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A request field that is not acceptable, and why.
#[derive(Debug, PartialEq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

impl KeyRequest {
    /// The key it describes, for `key` (hashed), made at `now`.
    pub fn into_key(self, id: String, key: &str, now: i64) -> Result<ApiKey, Invalid> {
        let name = self.name.trim().to_string();
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control)
        {
            return Err(invalid(
                "name",
                format!("name must be 1 to {MAX_NAME} characters, without control characters"),
            ));
        }
        if let Some(models) = &self.models {
            if models.is_empty() || models.len() > MAX_MODELS {
                return Err(invalid(
                    "models",
                    format!("models must list 1 to {MAX_MODELS} model names, or be left out for every model"),
                ));
            }
            if let Some(bad) = models.iter().find(|m| {
                m.trim().is_empty() || m.len() > MAX_MODEL || m.chars().any(char::is_control)
            }) {
                return Err(invalid(
                    "models",
                    format!("{bad:?} is not a model name (1 to {MAX_MODEL} characters, no control characters)"),
                ));
            }
        }
        let limit = |field: &'static str, value: Option<u64>, max: u64| match value {
            Some(n) if n == 0 || n > max => Err(invalid(
                field,
                format!("{field} must be between 1 and {max}, or left out for no limit"),
            )),
            other => Ok(other),
        };
        let requests_per_minute = limit(
            "requests_per_minute",
            self.requests_per_minute,
            MAX_REQUESTS_PER_MINUTE,
        )?;
        let tokens_per_minute = limit(
            "tokens_per_minute",
            self.tokens_per_minute,
            MAX_TOKENS_PER_MINUTE,
        )?;
        let expires_at = match &self.expires_at {
            None => None,
            Some(text) => {
                let at = crate::clock::parse_rfc3339(text).map_err(|e| {
                    invalid(
                        "expires_at",
                        format!(
                            "expires_at must be an RFC 3339 time such as 2027-01-31T00:00:00Z: {e}"
                        ),
                    )
                })?;
                if at <= now {
                    return Err(invalid("expires_at", "expires_at is in the past"));
                }
                Some(at)
            }
        };
        let mut models = self.models;
        if let Some(models) = &mut models {
            models.sort();
            models.dedup();
        }
        Ok(ApiKey {
            id,
            name,
            hash: crate::fleet::token::hash(key),
            prefix: key.chars().take(SHOWN_CHARS).collect(),
            models,
            requests_per_minute,
            tokens_per_minute,
            expires_at,
            revoked_at: None,
            created_at: now,
        })
    }
}

/// A new key: the prefix and 32 random bytes, URL-safe base64.
pub fn generate() -> std::io::Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The SHA-256 of a key. A plain hash suffices: keys are 256 random bits, so there is nothing
/// to guess that a slow hash would protect.
pub fn hash(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> KeyRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_key_is_stored_by_hash_and_prefix_only() {
        let key = generate().unwrap();
        assert!(key.starts_with("sk-sl-") && key.len() == 6 + 43, "{key}");
        assert_ne!(generate().unwrap(), key);
        let stored = request(serde_json::json!({"name": " team a ", "models": ["b", "a", "b"]}))
            .into_key("id".into(), &key, 1000)
            .unwrap();
        assert_eq!(stored.name, "team a");
        assert_eq!(stored.hash, crate::fleet::token::hash(&key));
        assert_eq!(stored.hash.len(), 64);
        assert_eq!(stored.prefix, key[..12]);
        assert_eq!(stored.models, Some(vec!["a".into(), "b".into()]));
        assert!(stored.allows("a") && !stored.allows("c"));
        assert_eq!(stored.status(1000), KeyStatus::Active);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (serde_json::json!({"name": ""}), "name"),
            (serde_json::json!({"name": "x\u{7}"}), "name"),
            (serde_json::json!({"name": "x", "models": []}), "models"),
            (serde_json::json!({"name": "x", "models": [" "]}), "models"),
            (
                serde_json::json!({"name": "x", "requests_per_minute": 0}),
                "requests_per_minute",
            ),
            (
                serde_json::json!({"name": "x", "tokens_per_minute": 0}),
                "tokens_per_minute",
            ),
            (
                serde_json::json!({"name": "x", "expires_at": "tomorrow"}),
                "expires_at",
            ),
            (
                serde_json::json!({"name": "x", "expires_at": "2020-01-01T00:00:00Z"}),
                "expires_at",
            ),
        ];
        for (json, field) in cases {
            let e = request(json.clone())
                .into_key("id".into(), "sk-sl-x", crate::clock::now_ms())
                .unwrap_err();
            assert_eq!(e.field, field, "{json}: {}", e.message);
        }
    }

    #[test]
    fn expiry_and_revocation_show_in_the_status() {
        let mut key =
            request(serde_json::json!({"name": "x", "expires_at": "2030-01-01T00:00:00Z"}))
                .into_key("id".into(), "sk-sl-x", 0)
                .unwrap();
        let at = crate::clock::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        assert_eq!(key.status(at - 1), KeyStatus::Active);
        assert_eq!(key.status(at), KeyStatus::Expired);
        key.revoked_at = Some(5);
        assert_eq!(key.status(0), KeyStatus::Revoked);
    }
}
