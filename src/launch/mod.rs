//! Launches: a request becomes a durable job that brings up a node's machine through a provider
//! (SkyPilot, AWS, Azure, local) and follows it until the node is ready, or tears it down.
//!
//! - [`operations`]: what the API asks (submit, cancel, delete a launched node);
//! - [`job`], [`stage`], [`failure`], [`events`]: the job record, its stages and attempts, why
//!   it failed, and its live events; [`store`]: its rows;
//! - [`runner`] with its worker, takeover and lifecycle files: running jobs under a lease;
//!   [`run`]: one running job as a provider sees it;
//! - [`spec`], [`catalog`], [`template`], [`providers`]: what may be launched, what a node runs,
//!   and how each provider checks, renders and launches it; [`teardown`] and [`orphans`]:
//!   nothing left billing.

pub mod events;
pub mod failure;
pub mod job;
mod lifecycle;
pub mod operations;
pub mod orphans;
pub mod providers;
pub mod run;
pub mod runner;
pub mod spec;
pub mod stage;
pub mod store;
mod takeover;
pub mod teardown;
pub mod template;
mod worker;

pub use operations::{cancel, delete_launched_node, submit, LaunchOpError};
