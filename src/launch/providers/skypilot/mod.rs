//! The SkyPilot provider: checks what a request may ask of SkyPilot, renders the SkyPilot task,
//! runs `sky launch`, turns its output into stages and attempts, explains its failures, and
//! reads what `sky status` and `sky down` say about a cluster.

pub mod checks;
pub mod cluster;
pub mod explain;
#[cfg(test)]
mod fixture_tests;
pub mod parse;
pub mod provider;
pub mod readiness;
pub mod task;

pub use provider::SkypilotProvider;
