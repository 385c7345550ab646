//! `provider: "aws"`: native EC2 launches with aws-sdk-ec2 (instance-type catalogue and the
//! request checks on it, what EC2 errors mean for a launch, what a region offers, the provider,
//! the orphan inventory).

use crate::launch::providers::placement::NativeCloud;

pub mod catalog;
pub mod explain;
pub mod orphans;
pub mod provider;
pub mod readiness;
pub mod region;

pub use provider::{AwsProvider, AwsSettings};

/// The request checks of `provider: "aws"`: launches on AWS, on an instance type from the table.
pub const REQUESTS: NativeCloud = NativeCloud {
    cloud: "aws",
    label: "AWS",
    machines: catalog::INSTANCE_TYPES,
};
