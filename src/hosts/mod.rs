//! Hosts the operator owns, reached over SSH, for the `ssh` provider. So far: what a host is
//! made of, found by [`probe`] (its OS, GPUs, free disk, whether systemd runs there).

pub mod probe;

pub use probe::{probe, HostGpu, HostProbe, ProbeError};
