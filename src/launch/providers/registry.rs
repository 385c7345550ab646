//! Which providers there are: the [`Provider`] a request names (with what each kind checks before
//! anything is queued), and the [`Providers`] this process runs launches with, as the app
//! configured them.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{aws, azure, local, skypilot, ssh, LaunchProvider, RenderedTask, RequestChecks};
use crate::launch::job::Job;
use crate::launch::template::{NodeIdentity, Template};

/// A kind of provider, as requests and jobs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Skypilot,
    Aws,
    Azure,
    Local,
    Ssh,
}

impl Provider {
    /// Every kind, in the order error messages and suggestions list them.
    pub const ALL: [Provider; 5] = [
        Provider::Skypilot,
        Provider::Aws,
        Provider::Azure,
        Provider::Local,
        Provider::Ssh,
    ];

    pub fn as_str(self) -> &'static str {
        self.kind().name
    }

    /// The kind named exactly `name` (lower case, as [`as_str`](Self::as_str) writes it).
    pub fn from_name(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// What this kind of provider checks in a request before anything is queued.
    pub fn request_checks(self) -> &'static dyn RequestChecks {
        self.kind().checks
    }

    /// Whether this build of skylaunch has the provider (Azure needs the `azure` cargo feature).
    pub fn in_this_build(self) -> bool {
        self.kind().built
    }

    /// The kind table: one line per kind.
    fn kind(self) -> Kind {
        match self {
            Provider::Skypilot => Kind::new("skypilot", &skypilot::checks::SkypilotRequests),
            Provider::Aws => Kind::new("aws", &aws::REQUESTS),
            Provider::Azure => Kind {
                built: cfg!(feature = "azure"),
                ..Kind::new("azure", &azure::REQUESTS)
            },
            Provider::Local => Kind::new("local", &local::LocalRequests),
            Provider::Ssh => Kind::new("ssh", &ssh::SshRequests),
        }
    }
}

/// A kind of provider: its name, its request checks (from its own folder), and whether this
/// build has it.
struct Kind {
    name: &'static str,
    checks: &'static dyn RequestChecks,
    built: bool,
}

impl Kind {
    const fn new(name: &'static str, checks: &'static dyn RequestChecks) -> Kind {
        Kind {
            name,
            checks,
            built: true,
        }
    }
}

/// The providers this process launches with, by kind. A kind this build or configuration has
/// no provider for is refused when a launch asks for it.
#[derive(Clone, Default)]
pub struct Providers {
    by_kind: HashMap<Provider, Arc<dyn LaunchProvider>>,
}

impl Providers {
    /// Adds (or replaces) the provider of a kind.
    pub fn with(mut self, kind: Provider, provider: Arc<dyn LaunchProvider>) -> Providers {
        self.by_kind.insert(kind, provider);
        self
    }

    pub fn get(&self, kind: Provider) -> Option<Arc<dyn LaunchProvider>> {
        self.by_kind.get(&kind).cloned()
    }

    /// What the job's provider renders for its machine. A job whose provider this process lacks
    /// gets the SkyPilot task every provider shows by default: the job still shows its task, and
    /// the launch fails when it reaches the provider.
    pub fn render(&self, job: &Job, template: &Template, node: &NodeIdentity<'_>) -> RenderedTask {
        match self.get(job.provider) {
            Some(provider) => provider.render(job, template, node),
            None => skypilot::task::rendered(&job.spec, template, &job.cluster_name, node),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_as_serde_writes_them() {
        for kind in Provider::ALL {
            assert_eq!(Provider::from_name(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(Provider::from_name("Skypilot"), None);
    }
}
