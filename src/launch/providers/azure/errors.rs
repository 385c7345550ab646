//! What an Azure Resource Manager error means for a launch (issue 4's native Azure provider),
//! including the quota numbers Azure puts in `OperationNotAllowed` messages.

use std::sync::LazyLock;

use regex::Regex;

use crate::launch::error::{ErrorCode, LaunchError};

#[derive(Debug, Clone, PartialEq)]
pub enum ArmFailure {
    /// No room for this size here: try the next placement.
    NextPlacement {
        code: ErrorCode,
    },
    Fatal(LaunchError),
    /// Throttling or a server error: retry with backoff.
    Retry,
}

static QUOTA: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"approved (\w+) Cores quota.*?Current Limit: (\d+), Current Usage: (\d+), Additional Required: (\d+)")
        .expect("static regex")
});

pub fn classify(code: &str, message: &str, vm_size: &str, region: &str, spot: bool) -> ArmFailure {
    let raw = format!("{code}: {message}");
    match code {
        "SkuNotAvailable" | "AllocationFailed" | "ZonalAllocationFailed" | "OverconstrainedAllocationRequest"
        | "OverconstrainedZonalAllocationRequest" => ArmFailure::NextPlacement {
            code: if spot { ErrorCode::SpotCapacityUnavailable } else { ErrorCode::CapacityUnavailable },
        },
        "OperationNotAllowed" if message.contains("quota") => {
            let (family, numbers) = match QUOTA.captures(message) {
                Some(c) => (
                    c[1].to_string(),
                    format!(" (limit {}, in use {}, this launch needs {} more)", &c[2], &c[3], &c[4]),
                ),
                None => ("the VM family".to_string(), String::new()),
            };
            ArmFailure::Fatal(
                LaunchError::new(
                    ErrorCode::QuotaExceeded,
                    format!("Azure cores quota too low for {vm_size} in {region}"),
                    format!("Starting {vm_size} in {region} would exceed the subscription's {family} cores quota{numbers}."),
                )
                .suggest(format!("Request more {family} cores in {region} (Azure portal > Subscriptions > Usage + quotas)"))
                .suggest("Or try another region where the quota is available")
                .with_raw(raw),
            )
        }
        "AuthorizationFailed" | "InvalidAuthenticationToken" | "ExpiredAuthenticationToken" | "AuthenticationFailed" => {
            ArmFailure::Fatal(
                LaunchError::new(
                    ErrorCode::CredentialsInvalid,
                    "Azure rejected skylaunch's credentials",
                    format!("Azure answered {code}: the service principal's credentials are invalid or expired, or it lacks a role on the resource group."),
                )
                .suggest("Check the tenant, client id and secret the control plane uses: `az login --service-principal ...`")
                .suggest("Give the principal the Virtual Machine Contributor and Network Contributor roles on the resource group")
                .with_raw(raw),
            )
        }
        "TooManyRequests" | "InternalServerError" | "ServerBusy" | "RetryableError" => ArmFailure::Retry,
        _ => ArmFailure::Fatal(
            LaunchError::new(ErrorCode::Internal, format!("Azure refused the launch ({code})"), message.to_string()).with_raw(raw),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_errors_move_to_the_next_placement() {
        for code in [
            "SkuNotAvailable",
            "AllocationFailed",
            "ZonalAllocationFailed",
            "OverconstrainedAllocationRequest",
        ] {
            assert_eq!(
                classify(
                    code,
                    "Allocation failed. Please try reducing the VM size",
                    "Standard_NC24ads_A100_v4",
                    "eastus",
                    false
                ),
                ArmFailure::NextPlacement {
                    code: ErrorCode::CapacityUnavailable
                },
                "{code}"
            );
        }
    }

    #[test]
    fn cores_quota_is_quota_exceeded_quoting_the_numbers() {
        let message = "Operation could not be completed as it results in exceeding approved standardNCADSA100v4Family Cores quota. Additional details - Deployment Model: Resource Manager, Location: eastus, Current Limit: 24, Current Usage: 24, Additional Required: 24, (Minimum) New Limit Required: 48.";
        let ArmFailure::Fatal(e) = classify(
            "OperationNotAllowed",
            message,
            "Standard_NC24ads_A100_v4",
            "eastus",
            false,
        ) else {
            panic!("fatal expected")
        };
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert!(
            e.message.contains("standardNCADSA100v4Family"),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains("limit 24, in use 24, this launch needs 24 more"),
            "{}",
            e.message
        );
    }

    #[test]
    fn auth_errors_are_credentials_invalid_and_throttling_retries() {
        for code in ["AuthorizationFailed", "InvalidAuthenticationToken"] {
            let ArmFailure::Fatal(e) = classify(code, "m", "s", "eastus", true) else {
                panic!("{code}")
            };
            assert_eq!(e.code, ErrorCode::CredentialsInvalid);
        }
        assert_eq!(
            classify("TooManyRequests", "m", "s", "eastus", true),
            ArmFailure::Retry
        );
    }
}
