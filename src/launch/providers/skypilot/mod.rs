//! The SkyPilot provider: runs `sky launch`, turns its output into stages and attempts, and
//! explains its failures.

pub mod errors;
#[cfg(test)]
mod fixture_tests;
pub mod parse;
pub mod provider;

pub use provider::SkypilotProvider;
