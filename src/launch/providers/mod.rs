//! Launch providers behind one interface: each creates what a node needs (a VM, or processes on
//! this machine), reports progress through the [`JobRun`](crate::launch::run::JobRun), and
//! can tear everything down again from the job's stored state, also after a crash.

pub mod aws;
pub mod azure;
pub mod bootstrap;
pub mod child_env;
pub mod local;
pub mod placement;
pub mod skypilot;

use std::future::Future;
use std::pin::Pin;

use super::failure::LaunchError;
use super::job::Job;
use super::run::JobRun;
use super::spec::{LaunchSpec, SpecError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait LaunchProvider: Send + Sync {
    /// Refuses, before anything is queued, a launch this provider as configured cannot run
    /// (e.g. Azure without a subnet in a region asked for). The default accepts everything.
    fn check(&self, _spec: &LaunchSpec) -> Result<(), SpecError> {
        Ok(())
    }

    /// Creates the node's machine and starts its model server and agent. Returns once they are
    /// started; the runner then waits for the agent to register and the node to become ready.
    fn launch<'a>(&'a self, run: &'a JobRun) -> BoxFuture<'a, Result<(), LaunchError>>;

    /// Asked when a launch is taken over from a process that stopped before the node's agent
    /// registered: whether the machine that process asked for exists or is still being made.
    /// If so, the agent started there holds the launch's token and will register, so the launch
    /// goes on by waiting for it instead of making a second machine. The default (this provider
    /// cannot find a stopped attempt again) makes the takeover tear down and launch again.
    fn still_launching<'a>(&'a self, _job: &'a Job) -> BoxFuture<'a, Result<bool, LaunchError>> {
        Box::pin(async { Ok(false) })
    }

    /// Removes everything the job created. Idempotent; works from `job.provider_state` alone.
    fn teardown<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), LaunchError>>;
}
