//! Launch jobs: validation, task rendering, stages, the error taxonomy, and the providers that
//! create VMs (SkyPilot, AWS, Azure, local) behind one interface.

pub mod catalog;
pub mod error;
pub mod events;
pub mod job;
pub mod orphans;
pub mod providers;
pub mod run;
pub mod runner;
pub mod spec;
pub mod stage;
pub mod task;
pub mod teardown;
