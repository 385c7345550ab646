//! What an EC2 API error means for a launch of the native AWS provider: try the next placement,
//! stop trying spot, stop with a quota or credentials error, or retry the same call. The code
//! named is always the real cause.

use aws_sdk_ec2::error::ProvideErrorMetadata;

use crate::launch::failure::{ErrorCode, LaunchError};

/// What to do after an EC2 error.
#[derive(Debug, Clone, PartialEq)]
pub enum Ec2Failure {
    /// This zone/type/market has no room: try the next placement.
    NextPlacement { code: ErrorCode },
    /// Spot is refused for a spot-specific reason: skip the remaining spot placements.
    SpotRefused,
    /// The account cannot run this: stop and explain.
    Fatal(LaunchError),
    /// Throttling or a server error: retry the same call with backoff.
    Retry,
}

/// Classifies an EC2 error by its code (e.g. `InsufficientInstanceCapacity`).
pub fn classify(
    code: &str,
    message: &str,
    request_id: Option<&str>,
    instance_type: &str,
    region: &str,
    spot: bool,
) -> Ec2Failure {
    let raw = format!(
        "{code}: {message}{}",
        request_id
            .map(|r| format!(" (request id {r})"))
            .unwrap_or_default()
    );
    match code {
        "InsufficientInstanceCapacity" | "InsufficientHostCapacity" | "Unsupported" | "InsufficientCapacity" => {
            Ec2Failure::NextPlacement {
                code: if spot { ErrorCode::SpotCapacityUnavailable } else { ErrorCode::CapacityUnavailable },
            }
        }
        "SpotMaxPriceTooLow" | "MaxSpotInstanceCountExceeded" => Ec2Failure::SpotRefused,
        "VcpuLimitExceeded" | "InstanceLimitExceeded" => Ec2Failure::Fatal(
            LaunchError::new(
                ErrorCode::QuotaExceeded,
                format!("AWS quota too low for {instance_type} in {region}"),
                format!(
                    "AWS refused to start {instance_type} in {region} because the account's vCPU quota for this instance family is used up ({code})."
                ),
            )
            .suggest(format!(
                "Request a higher quota in the Service Quotas console: EC2 > \"Running On-Demand {} instances\"{} in {region}",
                family_quota(instance_type),
                if spot { " (or \"All … Spot Instance Requests\" for spot)" } else { "" }
            ))
            .suggest("Or try another region where the quota is available")
            .with_raw(raw),
        ),
        "AuthFailure" | "UnauthorizedOperation" | "OptInRequired" | "InvalidClientTokenId" | "SignatureDoesNotMatch" => {
            Ec2Failure::Fatal(
                LaunchError::new(
                    ErrorCode::CredentialsInvalid,
                    "AWS rejected skylaunch's credentials",
                    format!("AWS answered {code}: the credentials are invalid, expired, or lack a permission skylaunch needs."),
                )
                .suggest("Check the access key and secret (or the instance role) the control plane uses: `aws sts get-caller-identity`")
                .suggest("Make sure the IAM policy allows ec2:RunInstances, ec2:DescribeInstances, ec2:TerminateInstances and ec2:CreateTags")
                .with_raw(raw),
            )
        }
        "RequestLimitExceeded" | "InternalError" | "ServiceUnavailable" | "Unavailable" => Ec2Failure::Retry,
        _ => Ec2Failure::Fatal(
            LaunchError::new(
                ErrorCode::Internal,
                format!("AWS refused the launch ({code})"),
                format!("EC2 answered {code}: {message}"),
            )
            .with_raw(raw),
        ),
    }
}

/// The quota family of an instance type as the Service Quotas console names it.
fn family_quota(instance_type: &str) -> &'static str {
    match instance_type.chars().next() {
        Some('g') | Some('v') => "G and VT",
        Some('p') => "P",
        _ => "Standard (A, C, D, H, I, M, R, T, Z)",
    }
}

/// An SDK error in one line: its code and message when EC2 answered, else the cause chain.
pub fn describe<E: std::error::Error + 'static>(e: &aws_sdk_ec2::error::SdkError<E>) -> String
where
    aws_sdk_ec2::error::SdkError<E>: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    match (e.code(), e.message()) {
        (Some(code), message) => format!("{code}: {}", message.unwrap_or("")),
        _ => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// A failed EC2 call other than `RunInstances`: credentials errors as such, anything else as the
/// provider being unavailable, quoting EC2's answer.
pub fn call_failed<E: ProvideErrorMetadata + std::error::Error + 'static>(
    call: &str,
    e: &aws_sdk_ec2::error::SdkError<E>,
) -> LaunchError
where
    aws_sdk_ec2::error::SdkError<E>: ProvideErrorMetadata,
{
    match classify(
        e.code().unwrap_or(""),
        e.message().unwrap_or(""),
        None,
        "",
        "",
        false,
    ) {
        Ec2Failure::Fatal(error) if error.code == ErrorCode::CredentialsInvalid => error,
        _ => LaunchError::new(
            ErrorCode::ProviderUnavailable,
            format!("EC2 {call} failed"),
            describe(e),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_errors_move_to_the_next_placement() {
        for code in [
            "InsufficientInstanceCapacity",
            "InsufficientHostCapacity",
            "Unsupported",
        ] {
            assert_eq!(
                classify(code, "m", None, "g6.xlarge", "us-east-1", true),
                Ec2Failure::NextPlacement {
                    code: ErrorCode::SpotCapacityUnavailable
                }
            );
        }
        assert_eq!(
            classify(
                "InsufficientInstanceCapacity",
                "m",
                None,
                "g6.xlarge",
                "us-east-1",
                false
            ),
            Ec2Failure::NextPlacement {
                code: ErrorCode::CapacityUnavailable
            }
        );
    }

    #[test]
    fn spot_specific_refusals_skip_spot() {
        assert_eq!(
            classify(
                "SpotMaxPriceTooLow",
                "m",
                None,
                "g6.xlarge",
                "us-east-1",
                true
            ),
            Ec2Failure::SpotRefused
        );
        assert_eq!(
            classify(
                "MaxSpotInstanceCountExceeded",
                "m",
                None,
                "g6.xlarge",
                "us-east-1",
                true
            ),
            Ec2Failure::SpotRefused
        );
    }

    #[test]
    fn vcpu_limit_is_quota_exceeded_naming_the_quota_to_raise() {
        let Ec2Failure::Fatal(e) = classify(
            "VcpuLimitExceeded",
            "You have requested more vCPU capacity than your current vCPU limit of 0 allows",
            Some("req-1"),
            "g6.xlarge",
            "us-east-1",
            false,
        ) else {
            panic!("fatal expected");
        };
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert!(
            e.suggestions[0].contains("Running On-Demand G and VT instances"),
            "{:?}",
            e.suggestions
        );
        assert!(e.raw.contains("req-1"));
    }

    #[test]
    fn auth_errors_are_credentials_invalid() {
        for code in ["AuthFailure", "UnauthorizedOperation", "OptInRequired"] {
            let Ec2Failure::Fatal(e) = classify(code, "m", None, "g6.xlarge", "us-east-1", true)
            else {
                panic!("{code}")
            };
            assert_eq!(e.code, ErrorCode::CredentialsInvalid, "{code}");
        }
    }

    #[test]
    fn throttling_and_server_errors_are_retried_and_others_quoted() {
        assert_eq!(
            classify(
                "RequestLimitExceeded",
                "m",
                None,
                "g6.xlarge",
                "us-east-1",
                true
            ),
            Ec2Failure::Retry
        );
        let Ec2Failure::Fatal(e) = classify(
            "InvalidAMIID.NotFound",
            "The image id does not exist",
            Some("r-9"),
            "g6.xlarge",
            "us-east-1",
            true,
        ) else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.contains("InvalidAMIID.NotFound") && e.raw.contains("r-9"));
    }
}
