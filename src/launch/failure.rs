//! Why a launch failed, as a job and the API show it: a stable code naming the real cause (the
//! same codes for every provider), a title, a plain-words message, concrete suggestions, and
//! the provider's raw output for reference. Providers' own `errors.rs` files map what their
//! cloud or CLI said onto these.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    CapacityUnavailable,
    SpotCapacityUnavailable,
    QuotaExceeded,
    CredentialsInvalid,
    NoCloudAccess,
    InvalidAccelerator,
    InvalidRegion,
    InvalidRequest,
    SetupFailed,
    ModelServerFailed,
    RegistrationTimeout,
    LaunchTimeout,
    Cancelled,
    ProviderUnavailable,
    /// An SSH host presented another host key than the one recorded.
    HostKeyMismatch,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::CapacityUnavailable => "capacity_unavailable",
            ErrorCode::SpotCapacityUnavailable => "spot_capacity_unavailable",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::CredentialsInvalid => "credentials_invalid",
            ErrorCode::NoCloudAccess => "no_cloud_access",
            ErrorCode::InvalidAccelerator => "invalid_accelerator",
            ErrorCode::InvalidRegion => "invalid_region",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::SetupFailed => "setup_failed",
            ErrorCode::ModelServerFailed => "model_server_failed",
            ErrorCode::RegistrationTimeout => "registration_timeout",
            ErrorCode::LaunchTimeout => "launch_timeout",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::ProviderUnavailable => "provider_unavailable",
            ErrorCode::HostKeyMismatch => "host_key_mismatch",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether trying another placement (zone, region, market) could help.
    pub fn is_placement_specific(self) -> bool {
        matches!(
            self,
            ErrorCode::CapacityUnavailable
                | ErrorCode::SpotCapacityUnavailable
                | ErrorCode::QuotaExceeded
        )
    }
}

/// A failed launch (or a failed attempt), explained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchError {
    pub code: ErrorCode,
    /// A short headline, e.g. "No L4 spot capacity in us-east-1".
    pub title: String,
    /// What happened, in plain words, naming the real cause.
    pub message: String,
    /// Concrete next steps, most useful first.
    pub suggestions: Vec<String>,
    /// The last lines of the provider's output, ANSI stripped.
    pub raw: String,
}

impl LaunchError {
    pub fn new(
        code: ErrorCode,
        title: impl Into<String>,
        message: impl Into<String>,
    ) -> LaunchError {
        LaunchError {
            code,
            title: title.into(),
            message: message.into(),
            suggestions: Vec::new(),
            raw: String::new(),
        }
    }

    pub fn suggest(mut self, suggestion: impl Into<String>) -> LaunchError {
        self.suggestions.push(suggestion.into());
        self
    }

    pub fn with_raw(mut self, raw: impl Into<String>) -> LaunchError {
        self.raw = raw.into();
        self
    }
}
