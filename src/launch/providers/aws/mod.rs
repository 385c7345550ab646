//! `provider: "aws"`: native EC2 launches with aws-sdk-ec2 (instance-type catalogue, error
//! mapping, the provider, the orphan inventory).

pub mod catalog;
pub mod errors;
pub mod orphans;
pub mod provider;

pub use provider::{AwsProvider, AwsSettings};
