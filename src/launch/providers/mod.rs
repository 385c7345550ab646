//! Launch providers behind one interface: each checks the requests it is asked for, renders what
//! its machine runs, creates what a node needs (a VM, or processes on this machine), reports
//! progress through the [`JobRun`](crate::launch::run::JobRun), and can tear everything down
//! again from the job's stored state, also after a crash.
//!
//! Adding a provider means a new folder here with its [`LaunchProvider`] and [`RequestChecks`],
//! a [`Provider`] variant with its line in the kind table, and its line where the app builds the
//! [`Providers`] registry.

pub mod aws;
pub mod azure;
pub mod bootstrap;
pub mod child_env;
pub mod local;
pub mod placement;
pub mod readiness;
pub mod registry;
pub mod skypilot;
pub mod ssh;

use std::future::Future;
use std::pin::Pin;

use super::failure::LaunchError;
use super::job::Job;
use super::run::JobRun;
use super::spec::{LaunchSpec, SpecError};
use super::template::{NodeIdentity, Template};
use crate::catalog::Gpu;

pub use registry::{Provider, Providers};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a kind of provider checks in a launch request before anything is queued, knowing only
/// the catalogues (not how the provider is configured; see [`LaunchProvider::check`]). The
/// generic checks (model id, envs, names, disk size) are the spec's own.
pub trait RequestChecks: Sync {
    /// Whether the request must name a GPU (the local provider runs without one).
    fn needs_gpu(&self) -> bool {
        true
    }

    /// Whether spot machines can be asked for (never on this machine).
    fn offers_spot(&self) -> bool {
        true
    }

    /// Whether GPU counts are those of the clouds' machine shapes (an owned host has whatever
    /// it has).
    fn machines_have_fixed_shapes(&self) -> bool {
        true
    }

    /// The templates this provider can run (`echo` needs the skylaunch binary beside the
    /// agent, which only the local and SSH providers put there).
    fn templates(&self) -> &'static [&'static str] {
        &["vllm"]
    }

    /// Whether a launch's `labels` choose among this provider's machines (SSH hosts).
    fn selects_hosts(&self) -> bool {
        false
    }

    /// The cloud the launch runs on (`None`: any the provider picks), from the one asked for,
    /// checked against the GPU and its count.
    fn cloud(
        &self,
        asked: Option<&str>,
        gpu: Option<&'static Gpu>,
        gpu_count: u32,
    ) -> Result<Option<String>, SpecError>;

    /// The regions to try, canonical and without repeats. The default accepts the regions of
    /// `cloud`, or of any cloud skylaunch knows when none is set.
    fn regions(&self, asked: &[String], cloud: Option<&str>) -> Result<Vec<String>, SpecError> {
        super::spec::check_regions(asked, cloud)
    }
}

/// `cloud` for a provider whose machines no cloud chooses (this machine, owned hosts): none may
/// be asked for; `why` says where the machine is instead.
pub fn no_cloud(asked: Option<&str>, why: &str) -> Result<Option<String>, SpecError> {
    match asked {
        None => Ok(None),
        Some(_) => Err(SpecError::invalid(
            "cloud",
            format!("{why}; leave cloud unset"),
        )),
    }
}

/// `regions` for such a provider: none, or only the names in `allowed` (which mean nothing more).
pub fn no_regions(asked: &[String], allowed: &[&str], why: &str) -> Result<Vec<String>, SpecError> {
    if asked.iter().all(|r| allowed.contains(&r.as_str())) {
        Ok(Vec::new())
    } else {
        Err(SpecError::invalid(
            "regions",
            format!("{why}; leave regions empty"),
        ))
    }
}

/// What a provider rendered for a launch's machine.
pub struct RenderedTask {
    /// What the provider hands the machine, secrets included: never stored or shown.
    pub for_machine: String,
    /// What the job stores as its `task_yaml` and the API shows, every secret and user env
    /// value masked.
    pub shown: String,
}

/// A launch's cluster name (the SkyPilot cluster; Azure names its VMs after it): valid for
/// SkyPilot (`[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?`) and short enough for every cloud's limit
/// once SkyPilot adds its suffix.
pub fn cluster_name(job_id: &str) -> String {
    let hex: String = job_id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(12)
        .collect();
    format!("sl-{}", hex.to_ascii_lowercase())
}

pub trait LaunchProvider: Send + Sync {
    /// Refuses, before anything is queued, a launch this provider as configured cannot run
    /// (e.g. Azure without a subnet in a region asked for). The default accepts everything.
    fn check(&self, _spec: &LaunchSpec) -> Result<(), SpecError> {
        Ok(())
    }

    /// Renders what the launch's machine runs (with the node's new token). The default is the
    /// SkyPilot task, which every provider's job shows as its `task_yaml`, so a launch reads the
    /// same whichever provider runs it; a provider that boots its machine another way hands it
    /// something else (see [`bootstrap::rendered`]).
    fn render(&self, job: &Job, template: &Template, node: &NodeIdentity<'_>) -> RenderedTask {
        skypilot::task::rendered(&job.spec, template, &job.cluster_name, node)
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

    /// Whether this provider, as configured, can launch now; if not, why and what to do
    /// (`skylaunch doctor`, `GET /admin/providers`). The default: always.
    fn readiness(&self, kind: Provider) -> BoxFuture<'_, readiness::Readiness> {
        Box::pin(async move { readiness::Readiness::of(kind).done("ready") })
    }

    /// Whether [`readiness`](Self::readiness) asks a cloud or runs a command (seconds, so its
    /// verdict is kept and refreshed in the background) rather than reading what this process
    /// knows.
    fn readiness_asks_the_cloud(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_valid_for_skypilot() {
        let name = cluster_name("5F3C2A1B-0D9E-4C7A-8B6F-123456789ABC");
        assert_eq!(name, "sl-5f3c2a1b0d9e");
    }
}
