//! Whether native AWS launches can run: the SDK's credential chain finds credentials, the
//! region's EC2 endpoint answers, and a `DryRun` `RunInstances` of the smallest GPU machine
//! says the permissions are there (EC2 answers `DryRunOperation` when the call would have been
//! allowed, `UnauthorizedOperation` when not). Nothing is started.

use aws_sdk_ec2::config::ProvideCredentials;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::InstanceType;

use super::explain::{call_failed, classify, describe, Ec2Failure};
use super::provider::AwsProvider;
use super::region::lookup_ami;
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::providers::readiness::Readiness;
use crate::launch::providers::Provider;

/// The machine the dry run asks for: the smallest GPU instance skylaunch launches (an L4).
const DRY_RUN_TYPE: &str = "g6.xlarge";

impl AwsProvider {
    pub(super) async fn check_readiness(&self, kind: Provider) -> Readiness {
        let mut r = Readiness::of(kind);
        let config = super::provider::sdk_loader(self.settings.endpoint_url.as_deref())
            .load()
            .await;
        let region = config
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| super::provider::DEFAULT_REGION.to_string());
        r.detail("region", region.as_str());
        let Some(credentials) = config.credentials_provider() else {
            r.failed(
                "credentials",
                no_credentials("the SDK has no credential chain"),
            );
            return r.done("");
        };
        match credentials.provide_credentials().await {
            Ok(_) => r.passed(
                "credentials",
                "the SDK's credential chain found credentials",
            ),
            Err(e) => {
                r.failed(
                    "credentials",
                    no_credentials(&skylaunch_protocol::error_chain(&e)),
                );
                return r.done("");
            }
        }
        // The configuration just loaded (and the credentials it resolved), in the region.
        let client = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&config)
                .region(aws_sdk_ec2::config::Region::new(region.clone()))
                .build(),
        );
        match client.describe_availability_zones().send().await {
            Ok(zones) => r.passed(
                "region",
                format!(
                    "{region} answers ({} zones)",
                    zones.availability_zones().len()
                ),
            ),
            Err(e) => {
                let mut error = call_failed("DescribeAvailabilityZones", &e);
                if error.code == ErrorCode::ProviderUnavailable {
                    error.title = format!("EC2 in {region} cannot be reached");
                    error = error
                        .suggest("Check this machine's network access to AWS (a proxy, a firewall, a VPC endpoint)")
                        .suggest("Set AWS_REGION to a region your account uses");
                }
                r.failed("region", error);
                return r.done("");
            }
        }
        let ami = match self.settings.ami.for_region(&region) {
            Some(ami) => ami.to_string(),
            None => match lookup_ami(&client, &region).await {
                Ok(ami) => ami,
                Err(e) => {
                    r.failed("image", e);
                    return r.done("");
                }
            },
        };
        r.passed("image", ami.clone());
        let dry_run = client
            .run_instances()
            .dry_run(true)
            .image_id(&ami)
            .instance_type(InstanceType::from(DRY_RUN_TYPE))
            .min_count(1)
            .max_count(1)
            .send()
            .await;
        match dry_run {
            Err(e) if e.code() == Some("DryRunOperation") => r.passed(
                "dry_run",
                format!("RunInstances of {DRY_RUN_TYPE} in {region} would be allowed"),
            ),
            Ok(_) => r.passed("dry_run", "RunInstances answered"),
            Err(e) => {
                let error = match e.code() {
                    Some(code) => match classify(
                        code,
                        e.message().unwrap_or(""),
                        None,
                        DRY_RUN_TYPE,
                        &region,
                        false,
                    ) {
                        Ec2Failure::Fatal(error) => error,
                        // Capacity or throttling: the permission is there.
                        _ => {
                            r.passed("dry_run", format!("RunInstances answered {code}"));
                            return r.done(format!("AWS in {region}"));
                        }
                    },
                    None => LaunchError::new(
                        ErrorCode::ProviderUnavailable,
                        "EC2 RunInstances failed",
                        describe(&e),
                    ),
                };
                r.failed("dry_run", error);
            }
        }
        r.done(format!("AWS in {region}"))
    }
}

fn no_credentials(why: &str) -> LaunchError {
    LaunchError::new(
        ErrorCode::CredentialsInvalid,
        "No AWS credentials found",
        format!("The AWS SDK's credential chain found no credentials: {why}."),
    )
    .suggest("Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile in ~/.aws/credentials, for the user skylaunch runs as")
    .suggest("On an EC2 VM: attach an instance role allowing ec2:RunInstances, ec2:DescribeInstances, ec2:TerminateInstances and ec2:CreateTags")
}
