//! `provider: "aws"`: native EC2 launches with aws-sdk-ec2 (instance-type catalogue, error
//! mapping, user-data bootstrap, the provider).

pub mod catalog;
pub mod errors;
pub mod orphans;
pub mod provider;
pub mod userdata;

pub use provider::{AwsProvider, AwsSettings};
