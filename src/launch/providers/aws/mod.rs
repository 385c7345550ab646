//! Native AWS launches (issue 4), in progress: the instance-type catalogue and the EC2 error
//! mapping exist and are tested; the provider that calls aws-sdk-ec2 is not built yet, so
//! `provider: "aws"` is still refused at validation.

pub mod catalog;
pub mod errors;
