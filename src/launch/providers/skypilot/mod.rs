//! The SkyPilot provider: runs `sky launch`, turns its output into stages and attempts, and
//! explains its failures.

pub mod errors;
pub mod parse;
