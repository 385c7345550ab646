//! Hosts the operator owns, reached over SSH, that `provider: "ssh"` launches onto: adding one
//! (its credentials sealed at rest, its host key given or learnt on first contact), probing what
//! it is made of (OS, GPUs, free disk, systemd), and lending it to one launch at a time.

pub mod model;
pub mod probe;
pub mod sealing;
pub mod service;
mod store;

pub use model::{Host, HostRequest, HostStatus, HostView};
pub use probe::{probe, HostGpu, HostProbe, ProbeError};
pub use service::{ClaimError, HostError, Hosts};
