//! What a region gives an EC2 launch before `RunInstances`: the zones that offer the instance
//! type, the GPU image (unless the operator chose one), and the security group that opens the
//! model port to the control plane only.

use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, LocationType, ResourceType, Tag, TagSpecification,
};
use aws_sdk_ec2::Client;

use super::explain::call_failed;
use super::provider::AwsProvider;
use crate::launch::failure::{ErrorCode, LaunchError};
use crate::launch::orphans::{INSTALLATION_TAG, MANAGED_TAG};
use crate::launch::run::JobRun;

/// The GPU image looked up when no AMI is configured: AWS's Deep Learning base image.
const AMI_OWNER: &str = "amazon";
const AMI_NAME: &str = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)*";

impl AwsProvider {
    /// The security group that lets only `cidr` reach the model port, created once per region.
    /// `None` (the VPC's default group) when no address range is known, with a note in the log.
    pub(super) async fn model_port_group(
        &self,
        run: &JobRun,
        client: &Client,
        region: &str,
        port: u16,
    ) -> Result<Option<String>, LaunchError> {
        let cidr = match self
            .settings
            .model_port_cidr
            .clone()
            .or_else(|| public_ip_cidr(&run.control_plane_url))
        {
            Some(cidr) => cidr,
            None => {
                run.log
                    .line("skylaunch", "no address range for the model port: set SKYLAUNCH_AWS_MODEL_PORT_CIDR so the control plane can reach it")
                    .await;
                return Ok(None);
            }
        };
        let name = format!(
            "skylaunch-model-port-{port}-{}",
            cidr.replace(['/', '.', ':'], "-")
        );
        let found = client
            .describe_security_groups()
            .filters(Filter::builder().name("group-name").values(&name).build())
            .send()
            .await
            .map_err(|e| call_failed("DescribeSecurityGroups", &e))?;
        if let Some(id) = found.security_groups().first().and_then(|g| g.group_id()) {
            return Ok(Some(id.to_string()));
        }
        // Found by name and shared by every installation in the account that uses the same
        // range, so it names the installation that made it, for the record only.
        let created = client
            .create_security_group()
            .group_name(&name)
            .description(format!("skylaunch: model port {port} from {cidr} only"))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::SecurityGroup)
                    .tags(Tag::builder().key(MANAGED_TAG).value("true").build())
                    .tags(
                        Tag::builder()
                            .key(INSTALLATION_TAG)
                            .value(&self.installation_id)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| call_failed("CreateSecurityGroup", &e))?;
        let id = created.group_id().unwrap_or_default().to_string();
        client
            .authorize_security_group_ingress()
            .group_id(&id)
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(i32::from(port))
                    .to_port(i32::from(port))
                    .ip_ranges(
                        IpRange::builder()
                            .cidr_ip(&cidr)
                            .description("skylaunch control plane")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| call_failed("AuthorizeSecurityGroupIngress", &e))?;
        run.log
            .line(
                "skylaunch",
                &format!("created security group {id} in {region}: port {port} from {cidr} only"),
            )
            .await;
        Ok(Some(id))
    }
}

/// `a.b.c.d/32` when the control plane's URL names an IP address.
fn public_ip_cidr(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split(['/', ':']).next()?;
    let ip: std::net::Ipv4Addr = host.parse().ok()?;
    Some(format!("{ip}/32"))
}

/// The zones of a region that offer the instance type.
pub(super) async fn zones_offering(
    client: &Client,
    instance_type: &str,
) -> Result<Vec<String>, LaunchError> {
    let out = client
        .describe_instance_type_offerings()
        .location_type(LocationType::AvailabilityZone)
        .filters(
            Filter::builder()
                .name("instance-type")
                .values(instance_type)
                .build(),
        )
        .send()
        .await
        .map_err(|e| call_failed("DescribeInstanceTypeOfferings", &e))?;
    let mut zones: Vec<String> = out
        .instance_type_offerings()
        .iter()
        .filter_map(|o| o.location().map(str::to_string))
        .collect();
    zones.sort();
    zones.dedup();
    Ok(zones)
}

pub(super) async fn lookup_ami(client: &Client, region: &str) -> Result<String, LaunchError> {
    let out = client
        .describe_images()
        .owners(AMI_OWNER)
        .filters(Filter::builder().name("name").values(AMI_NAME).build())
        .send()
        .await
        .map_err(|e| call_failed("DescribeImages", &e))?;
    let mut images: Vec<_> = out.images().iter().collect();
    images.sort_by_key(|i| i.creation_date().unwrap_or_default().to_string());
    images
        .last()
        .and_then(|i| i.image_id())
        .map(str::to_string)
        .ok_or_else(|| {
            LaunchError::new(
                ErrorCode::ProviderUnavailable,
                format!("No GPU image found in {region}"),
                format!("no AMI named {AMI_NAME:?} from {AMI_OWNER} in {region}"),
            )
            .suggest("Set SKYLAUNCH_AWS_AMI to a GPU AMI id for this region")
        })
}
