//! Whether each provider can launch now, and if not, exactly why and what to do: what
//! `skylaunch doctor` prints and `GET /admin/providers` answers (the Launch Instance dialog
//! shows it beside each provider).
//!
//! Each provider checks itself ([`LaunchProvider::readiness`]); its verdict uses the error codes
//! of launches. A check that asks a cloud or runs `sky check` takes seconds, so the
//! [`ReadinessBoard`] keeps the last verdicts and refreshes them in the background: a request
//! never waits on one. Checks of what this process already knows (SSH hosts, this machine)
//! run on every request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::{LaunchProvider, Provider, Providers};
use crate::launch::failure::{ErrorCode, LaunchError};

/// How long a provider's check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(90);
/// How old a cached verdict may be before a request starts a new check (in the background).
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// One thing a provider's check looked at.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Check {
    /// What was checked, e.g. `sky_found`, `credentials`, `dry_run`.
    pub name: &'static str,
    pub ok: bool,
    /// What was found, in words.
    pub detail: String,
}

/// A provider's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    #[schema(value_type = String)]
    pub provider: Provider,
    /// Whether a launch through this provider can start now.
    pub ready: bool,
    /// One line: what the provider will use, or why it cannot launch.
    pub summary: String,
    /// What was checked, in order; the first that failed is why it is not ready.
    pub checks: Vec<Check>,
    /// Facts found on the way (SkyPilot's version and enabled clouds, the AWS region, hosts
    /// available).
    #[schema(value_type = Object)]
    pub details: BTreeMap<&'static str, Value>,
    /// Why it cannot launch and what to do (`code`, `title`, `message`, `suggestions`), in the
    /// shape and with the codes of a failed launch; `null` when ready.
    #[schema(value_type = Option<Object>)]
    pub error: Option<LaunchError>,
    /// When the verdict was reached (RFC 3339); `null` while the first check runs.
    pub checked_at: Option<String>,
    /// A check is under way; this verdict is the previous one (or none yet).
    pub checking: bool,
}

impl Readiness {
    /// A verdict still to be reached.
    pub fn pending(provider: Provider) -> Readiness {
        Readiness {
            provider,
            ready: false,
            summary: "being checked".into(),
            checks: Vec::new(),
            details: BTreeMap::new(),
            error: None,
            checked_at: None,
            checking: true,
        }
    }

    /// Starts a verdict: ready unless a check fails.
    pub fn of(provider: Provider) -> Readiness {
        Readiness {
            checking: false,
            summary: String::new(),
            ready: true,
            ..Readiness::pending(provider)
        }
    }

    /// Records a check that passed.
    pub fn passed(&mut self, name: &'static str, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            ok: true,
            detail: detail.into(),
        });
    }

    /// Records a check that failed: the provider is not ready, for `error`'s reason.
    pub fn failed(&mut self, name: &'static str, error: LaunchError) -> &mut Readiness {
        self.checks.push(Check {
            name,
            ok: false,
            detail: error.message.clone(),
        });
        if self.error.is_none() {
            self.summary = error.title.clone();
            self.error = Some(error);
        }
        self.ready = false;
        self
    }

    pub fn detail(&mut self, key: &'static str, value: impl Into<Value>) {
        self.details.insert(key, value.into());
    }

    /// Ends the verdict: a ready provider's summary is `ready`'s; dated now.
    pub fn done(mut self, ready: impl Into<String>) -> Readiness {
        if self.ready {
            self.summary = ready.into();
        }
        self.checked_at = Some(crate::clock::rfc3339(crate::clock::now_ms()));
        self
    }

    /// A provider this process cannot launch with at all.
    fn absent(provider: Provider) -> Readiness {
        let error = if provider.in_this_build() {
            LaunchError::new(
                ErrorCode::ProviderUnavailable,
                format!("{} is not set up in this process", provider.as_str()),
                "This control plane was started without this provider.",
            )
        } else {
            LaunchError::new(
                ErrorCode::ProviderUnavailable,
                format!("This build of skylaunch has no {} provider", provider.as_str()),
                format!(
                    "skylaunch was built without the `{0}` cargo feature, so it cannot launch through {0}.",
                    provider.as_str()
                ),
            )
            .suggest(format!(
                "Build with the default features (`cargo build --release`), or add `--features {}`",
                provider.as_str()
            ))
        };
        let mut r = Readiness::of(provider);
        r.failed("available", error);
        r.done("")
    }

    /// A check that did not finish in time.
    fn timed_out(provider: Provider) -> Readiness {
        let mut r = Readiness::of(provider);
        r.failed(
            "finished",
            LaunchError::new(
                ErrorCode::ProviderUnavailable,
                format!("Checking {} took over {}s", provider.as_str(), CHECK_TIMEOUT.as_secs()),
                "The check did not finish: a cloud endpoint or the `sky` command did not answer in time.",
            )
            .suggest("Check this machine's network access to the cloud, then refresh"),
        );
        r.done("")
    }
}

/// Runs one provider's check, bounded by [`CHECK_TIMEOUT`].
async fn check(kind: Provider, provider: &dyn LaunchProvider) -> Readiness {
    match tokio::time::timeout(CHECK_TIMEOUT, provider.readiness(kind)).await {
        Ok(r) => r,
        Err(_) => Readiness::timed_out(kind),
    }
}

struct Entry {
    last: Option<Readiness>,
    checked: Option<std::time::Instant>,
    running: bool,
}

/// The providers' last verdicts, refreshed in the background.
pub struct ReadinessBoard {
    providers: Providers,
    entries: Mutex<HashMap<Provider, Entry>>,
}

impl ReadinessBoard {
    pub fn new(providers: Providers) -> Arc<ReadinessBoard> {
        Arc::new(ReadinessBoard {
            providers,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// Checks every provider and waits for the verdicts (`skylaunch doctor`).
    pub async fn check_now(&self) -> Vec<Readiness> {
        let checks = Provider::ALL.into_iter().map(|kind| async move {
            match self.providers.get(kind) {
                Some(p) => check(kind, p.as_ref()).await,
                None => Readiness::absent(kind),
            }
        });
        futures_util::future::join_all(checks).await
    }

    /// Every provider's verdict as known now, without waiting: a provider that asks its cloud
    /// gives its last verdict and, when that is missing, older than [`MAX_AGE`] or `refresh`
    /// is set, starts a new check in the background (`checking`); the others are checked here.
    pub async fn current(self: &Arc<Self>, refresh: bool) -> Vec<Readiness> {
        let mut out = Vec::new();
        for kind in Provider::ALL {
            let Some(provider) = self.providers.get(kind) else {
                out.push(Readiness::absent(kind));
                continue;
            };
            if !provider.readiness_asks_the_cloud() {
                out.push(check(kind, provider.as_ref()).await);
                continue;
            }
            out.push(self.cached(kind, provider, refresh));
        }
        out
    }

    fn cached(
        self: &Arc<Self>,
        kind: Provider,
        provider: Arc<dyn LaunchProvider>,
        refresh: bool,
    ) -> Readiness {
        let mut entries = self.entries.lock().expect("readiness lock");
        let entry = entries.entry(kind).or_insert(Entry {
            last: None,
            checked: None,
            running: false,
        });
        let stale = entry.checked.is_none_or(|at| at.elapsed() > MAX_AGE);
        if (stale || refresh) && !entry.running {
            entry.running = true;
            let board = self.clone();
            tokio::spawn(async move {
                let verdict = check(kind, provider.as_ref()).await;
                let mut entries = board.entries.lock().expect("readiness lock");
                if let Some(entry) = entries.get_mut(&kind) {
                    entry.last = Some(verdict);
                    entry.checked = Some(std::time::Instant::now());
                    entry.running = false;
                }
            });
        }
        let mut shown = entry
            .last
            .clone()
            .unwrap_or_else(|| Readiness::pending(kind));
        shown.checking = entry.running;
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failed_check_names_the_verdict() {
        let mut r = Readiness::of(Provider::Aws);
        r.passed("credentials", "found");
        r.failed(
            "region",
            LaunchError::new(ErrorCode::ProviderUnavailable, "first", "m1"),
        );
        r.failed(
            "dry_run",
            LaunchError::new(ErrorCode::CredentialsInvalid, "second", "m2"),
        );
        let r = r.done("never shown");
        assert!(!r.ready);
        assert_eq!(r.summary, "first");
        assert_eq!(r.error.unwrap().code, ErrorCode::ProviderUnavailable);
        assert_eq!(
            r.checks.iter().map(|c| c.ok).collect::<Vec<_>>(),
            [true, false, false]
        );
        let ok = Readiness::of(Provider::Local).done("this machine");
        assert!(ok.ready && ok.summary == "this machine" && ok.checked_at.is_some());
    }
}
