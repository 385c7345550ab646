//! What an Azure Resource Manager error means for a launch, including the quota numbers Azure
//! puts in `OperationNotAllowed` messages (also read by the SkyPilot error mapper, which sees the
//! same messages when SkyPilot launches on Azure).

use std::sync::LazyLock;

use regex::Regex;

use crate::launch::failure::{ErrorCode, LaunchError};

#[derive(Debug, Clone, PartialEq)]
pub enum ArmFailure {
    /// No room for this size here: try the next placement.
    NextPlacement,
    /// Spot is refused for this subscription (its spot cores quota): go on to on-demand if the
    /// launch allows it; otherwise this is the launch's error.
    SpotRefused(LaunchError),
    Fatal(LaunchError),
    /// Throttling or a server error that outlasted the SDK's own retries.
    Retry,
}

/// A cores quota Azure refused a VM for, as its message states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoresQuota {
    /// e.g. `standardNCADSA100v4Family`, `Low Priority`, `Total Regional`.
    pub family: String,
    /// `(limit, usage, additional required)` when the message gives them.
    pub numbers: Option<(u64, u64, u64)>,
}

impl CoresQuota {
    /// Spot VMs count against the "Low Priority" cores quota.
    pub fn is_spot(&self) -> bool {
        self.family.eq_ignore_ascii_case("low priority")
    }

    /// " (limit 24, in use 24, this launch needs 24 more)", or nothing without numbers.
    pub fn numbers_text(&self) -> String {
        match self.numbers {
            Some((limit, usage, required)) => {
                format!(" (limit {limit}, in use {usage}, this launch needs {required} more)")
            }
            None => String::new(),
        }
    }
}

static QUOTA_FAMILY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"approved (.+?) Cores quota").expect("static regex"));
static QUOTA_NUMBERS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"Current Limit: (\d+), Current Usage: (\d+), Additional Required: (\d+)")
        .expect("static regex")
});

/// The cores quota an Azure message says was exceeded, if it says so.
pub fn cores_quota(message: &str) -> Option<CoresQuota> {
    let family = QUOTA_FAMILY.captures(message)?[1].to_string();
    let numbers = QUOTA_NUMBERS
        .captures(message)
        .and_then(|c| Some((c[1].parse().ok()?, c[2].parse().ok()?, c[3].parse().ok()?)));
    Some(CoresQuota { family, numbers })
}

fn quota_exceeded(quota: &CoresQuota, vm_size: &str, region: &str, raw: String) -> LaunchError {
    let family = &quota.family;
    LaunchError::new(
        ErrorCode::QuotaExceeded,
        format!("Azure cores quota too low for {vm_size} in {region}"),
        format!(
            "Starting {vm_size} in {region} would exceed the subscription's {family} cores quota{}.",
            quota.numbers_text()
        ),
    )
    .suggest(format!(
        "Request more {family} cores in {region} (Azure portal > Subscriptions > Usage + quotas)"
    ))
    .suggest("Or try another region where the quota is available")
    .with_raw(raw)
}

/// Classifies an ARM error `code` and `message` from a call that tried `vm_size` in `region`.
pub fn classify(code: &str, message: &str, vm_size: &str, region: &str, spot: bool) -> ArmFailure {
    let raw = format!("{code}: {message}");
    match code {
        "SkuNotAvailable"
        | "AllocationFailed"
        | "ZonalAllocationFailed"
        | "OverconstrainedAllocationRequest"
        | "OverconstrainedZonalAllocationRequest" => ArmFailure::NextPlacement,
        "OperationNotAllowed" | "QuotaExceeded" => match cores_quota(message) {
            Some(quota) if spot && quota.is_spot() => {
                ArmFailure::SpotRefused(quota_exceeded(&quota, vm_size, region, raw))
            }
            Some(quota) => ArmFailure::Fatal(quota_exceeded(&quota, vm_size, region, raw)),
            // Some subscriptions (free and sponsored ones, some offers) may not run spot at all.
            None if spot && message.to_ascii_lowercase().contains("spot") => ArmFailure::SpotRefused(
                LaunchError::new(
                    ErrorCode::SpotCapacityUnavailable,
                    format!("Azure does not allow spot {vm_size} for this subscription"),
                    format!("Azure refused a spot VM in {region}: {message}"),
                )
                .suggest("Launch on-demand, or allow on-demand fallback (spot_fallback: \"on_demand\")")
                .with_raw(raw),
            ),
            None => ArmFailure::Fatal(
                LaunchError::new(
                    ErrorCode::InvalidRequest,
                    format!("Azure does not allow this launch ({code})"),
                    message.to_string(),
                )
                .with_raw(raw),
            ),
        },
        "AuthorizationFailed"
        | "InvalidAuthenticationToken"
        | "ExpiredAuthenticationToken"
        | "AuthenticationFailed"
        | "InvalidAuthenticationTokenTenant"
        | "LinkedAuthorizationFailed" => ArmFailure::Fatal(credentials_invalid(
            &format!("Azure answered {code}: {message}"),
            raw,
        )),
        "ResourceGroupNotFound"
        | "SubscriptionNotFound"
        | "InvalidSubscriptionId"
        | "InvalidResourceReference"
        | "LinkedInvalidPropertyId"
        | "NotFound"
        | "MissingSubscriptionRegistration" => ArmFailure::Fatal(
            LaunchError::new(
                ErrorCode::InvalidRequest,
                "skylaunch's Azure settings point at something Azure cannot find",
                format!("Azure answered {code}: {message}"),
            )
            .suggest("Check SKYLAUNCH_AZURE_SUBSCRIPTION_ID, SKYLAUNCH_AZURE_RESOURCE_GROUP and the subnet ids in SKYLAUNCH_AZURE_SUBNETS")
            .suggest("A new subscription may need the compute provider registered: `az provider register -n Microsoft.Compute`")
            .with_raw(raw),
        ),
        "TooManyRequests" | "InternalServerError" | "ServerBusy" | "RetryableError"
        | "ServiceUnavailable" => ArmFailure::Retry,
        _ => ArmFailure::Fatal(
            LaunchError::new(
                ErrorCode::Internal,
                format!("Azure refused the launch ({code})"),
                message.to_string(),
            )
            .with_raw(raw),
        ),
    }
}

/// Azure (or Entra ID, when asked for a token) rejected skylaunch's identity.
pub fn credentials_invalid(what: &str, raw: String) -> LaunchError {
    LaunchError::new(
        ErrorCode::CredentialsInvalid,
        "Azure rejected skylaunch's credentials",
        format!("{what}. The credentials are invalid or expired, or the identity lacks a role on the resource group."),
    )
    .suggest("Check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or the managed identity, or `az login`) on the control-plane host")
    .suggest("Give the identity the role in the README's Azure section on the resource group, and Reader on the subnets' virtual networks")
    .with_raw(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A100_QUOTA: &str = "Operation could not be completed as it results in exceeding approved standardNCADSA100v4Family Cores quota. Additional details - Deployment Model: Resource Manager, Location: eastus, Current Limit: 24, Current Usage: 24, Additional Required: 24, (Minimum) New Limit Required: 48. Submit a request for Quota increase at https://aka.ms/ProdportalCRP/#blade/Microsoft_Azure_Capacity/UsageAndQuota.ReactView/Parameters/ by specifying parameters listed in the ‘Details’ section for deployment to succeed.";
    const SPOT_QUOTA: &str = "Operation could not be completed as it results in exceeding approved Low Priority Cores quota. Additional details - Deployment Model: Resource Manager, Location: eastus, Current Limit: 0, Current Usage: 0, Additional Required: 36, (Minimum) New Limit Required: 36.";

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
                ArmFailure::NextPlacement,
                "{code}"
            );
        }
    }

    #[test]
    fn cores_quota_is_quota_exceeded_quoting_the_numbers() {
        let ArmFailure::Fatal(e) = classify(
            "OperationNotAllowed",
            A100_QUOTA,
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
    fn spot_cores_quota_refuses_spot_only() {
        let quota = cores_quota(SPOT_QUOTA).unwrap();
        assert_eq!(quota.family, "Low Priority");
        assert_eq!(quota.numbers, Some((0, 0, 36)));
        let ArmFailure::SpotRefused(e) = classify(
            "OperationNotAllowed",
            SPOT_QUOTA,
            "Standard_NV36ads_A10_v5",
            "eastus",
            true,
        ) else {
            panic!("spot refusal expected")
        };
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert!(e.suggestions[0].contains("Low Priority cores in eastus"));
    }

    #[test]
    fn a_subscription_without_spot_refuses_spot_only() {
        let message = "Spot VMs are not supported for this subscription offer type.";
        let ArmFailure::SpotRefused(e) = classify(
            "OperationNotAllowed",
            message,
            "Standard_NV36ads_A10_v5",
            "eastus",
            true,
        ) else {
            panic!("spot refusal expected")
        };
        assert_eq!(e.code, ErrorCode::SpotCapacityUnavailable);
        assert!(matches!(
            classify("OperationNotAllowed", message, "s", "eastus", false),
            ArmFailure::Fatal(_)
        ));
    }

    #[test]
    fn quota_numbers_are_optional() {
        let quota = cores_quota("exceeding approved Total Regional Cores quota").unwrap();
        assert_eq!(quota.family, "Total Regional");
        assert_eq!(quota.numbers_text(), "");
        assert_eq!(
            cores_quota("Operation not allowed on a deallocated VM"),
            None
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

    #[test]
    fn settings_pointing_nowhere_are_invalid_requests_naming_the_settings() {
        let ArmFailure::Fatal(e) = classify(
            "ResourceGroupNotFound",
            "Resource group 'gpu' could not be found.",
            "s",
            "eastus",
            false,
        ) else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.suggestions[0].contains("SKYLAUNCH_AZURE_RESOURCE_GROUP"));
    }
}
