//! The hosts service: adding a host (validated, its credentials sealed, then probed in the
//! background), probing again, listing, removing; and for the `ssh` provider, taking a free host
//! that fits a launch and giving it back. Every status change writes a host event in plain
//! words; no credential ever reaches an event, a log line or an error.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::model::{Host, HostRequest, HostStatus, HostView, InvalidHost};
use super::probe::{probe, HostProbe, ProbeError};
use super::sealing::{CredentialsKey, SealError};
use crate::clock::now_ms;
use crate::ssh::{fingerprint, SshAuth, SshError, SshSettings, SshTarget};
use crate::store::{Store, StoreError};

/// How many events a host's view shows.
const EVENTS_SHOWN: i64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{}", .0.message)]
    Invalid(InvalidHost),
    #[error("no host {0:?}")]
    NotFound(String),
    #[error("a host named {0:?} exists already")]
    NameTaken(String),
    #[error("host {name} is {status} (launch job {job}); delete or cancel that launch first")]
    InUse {
        name: String,
        status: &'static str,
        job: String,
    },
    #[error("host {0} changed meanwhile; try again")]
    Changed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why no host could be taken for a launch.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// No host fits, or none that fits is free; the message names what is missing.
    #[error("{0}")]
    NoneFree(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Hosts {
    store: Store,
    key: Arc<CredentialsKey>,
    pub ssh: SshSettings,
    probe_timeout: Duration,
    me: Weak<Hosts>,
}

impl Hosts {
    pub fn new(
        store: Store,
        key: Arc<CredentialsKey>,
        ssh: SshSettings,
        probe_timeout: Duration,
    ) -> Arc<Hosts> {
        Arc::new_cyclic(|me| Hosts {
            store,
            key,
            ssh,
            probe_timeout,
            me: me.clone(),
        })
    }

    /// Adds a host and starts probing it; answers with the host as stored (`pending`).
    pub async fn create(&self, request: HostRequest) -> Result<HostView, HostError> {
        let new = request.validate().map_err(HostError::Invalid)?;
        let id = uuid::Uuid::new_v4().to_string();
        let host_key_fingerprint = match &new.host_key {
            Some(key) => Some(fingerprint(key).await.map_err(|e| {
                HostError::Invalid(InvalidHost::new(
                    "host_key",
                    format!("ssh-keygen does not read this key: {e}"),
                ))
            })?),
            None => None,
        };
        let now = now_ms();
        let mut host = Host {
            credentials: self.key.seal(new.auth.secret(), &id),
            id,
            name: new.name,
            address: new.address,
            port: new.port,
            user: new.user,
            auth_kind: new.auth.kind(),
            host_key: new.host_key,
            host_key_fingerprint,
            labels: new.labels,
            gpu_type: new.gpu_type,
            gpu_count: new.gpu_count,
            status: HostStatus::Pending,
            reason: None,
            probe: None,
            job_id: None,
            revision: 0,
            created_at: now,
            updated_at: now,
        };
        match self.store.insert_host(&host).await {
            Err(StoreError::Duplicate(_)) => return Err(HostError::NameTaken(host.name)),
            other => other?,
        }
        let key_note = match &host.host_key_fingerprint {
            Some(fp) => format!("host key given ({fp})"),
            None => "its host key is learnt on first contact".to_string(),
        };
        self.event(
            &host.id,
            "added",
            &format!(
                "added: {}@{}:{} with a {}; {key_note}",
                host.user,
                host.address,
                host.port,
                host.auth_kind.as_str().replace('_', " ")
            ),
        )
        .await;
        tracing::info!(host = %host.name, host_id = %host.id, address = %host.address, port = host.port, "host added");
        self.start_probe(&mut host).await?;
        Ok(HostView::from(&host))
    }

    /// At start: probes again every host a stopped process left `pending` or `probing` (its
    /// probe died with it).
    pub async fn resume(&self) -> Result<(), HostError> {
        for mut host in self.store.hosts().await? {
            if matches!(host.status, HostStatus::Pending | HostStatus::Probing) {
                tracing::info!(host = %host.name, host_id = %host.id, "probing a host whose probe was interrupted");
                if let Err(e) = self.start_probe(&mut host).await {
                    tracing::info!(host = %host.name, error = %e, "not probed again here");
                }
            }
        }
        Ok(())
    }

    /// `POST /admin/hosts/<id>/probe`: probes again (a host no launch holds).
    pub async fn reprobe(&self, id: &str) -> Result<HostView, HostError> {
        let mut host = self.get(id).await?;
        if host.status.is_held() {
            return Err(in_use(&host));
        }
        self.start_probe(&mut host).await?;
        Ok(HostView::from(&host))
    }

    /// Marks the host `probing` and probes it on a task of its own.
    async fn start_probe(&self, host: &mut Host) -> Result<(), HostError> {
        host.status = HostStatus::Probing;
        host.reason = None;
        host.updated_at = now_ms();
        if !self.store.save_host(host).await? {
            return Err(HostError::Changed(host.name.clone()));
        }
        self.event(&host.id, "probing", "connecting over SSH to probe the host")
            .await;
        if let Some(me) = self.me.upgrade() {
            let host = host.clone();
            tokio::spawn(async move { me.finish_probe(host).await });
        }
        Ok(())
    }

    async fn finish_probe(&self, mut host: Host) {
        let found = self.connect_and_probe(&mut host).await;
        let now = now_ms();
        let (kind, message) = match found {
            Ok(p) => {
                let message = format!("probed: {}", summary(&p));
                host.probe = Some(p);
                host.status = HostStatus::Available;
                host.reason = None;
                ("probed", message)
            }
            Err(e) => {
                let kind = match &e {
                    ProbeFailure::Ssh(SshError::HostKeyMismatch { .. }) => "host_key_mismatch",
                    _ => "probe_failed",
                };
                let reason = e.to_string();
                host.status = HostStatus::Error;
                host.reason = Some(reason.clone());
                (kind, format!("probe failed: {reason}"))
            }
        };
        host.updated_at = now;
        match self.store.save_host(&mut host).await {
            Ok(true) => {
                self.event(&host.id, kind, &message).await;
                tracing::info!(host = %host.name, host_id = %host.id, status = host.status.as_str(), "{message}");
            }
            Ok(false) => {
                tracing::info!(host = %host.name, host_id = %host.id, "the host changed while it was probed (removed, or probed again): this probe's result is dropped");
            }
            Err(e) => {
                tracing::warn!(host = %host.name, host_id = %host.id, error = %e, "could not record the probe's result");
            }
        }
    }

    /// Learns the host key if none is recorded (trust on first use), then probes.
    async fn connect_and_probe(&self, host: &mut Host) -> Result<HostProbe, ProbeFailure> {
        let mut target = self.target(host)?;
        if target.host_key.is_none() {
            let key = target.learn_host_key(&self.ssh).await?;
            let fp = fingerprint(&key).await?;
            host.host_key = Some(key.clone());
            host.host_key_fingerprint = Some(fp.clone());
            target.host_key = Some(key);
            self.event(
                &host.id,
                "host_key_learnt",
                &format!("first contact: recorded the host key the host presented ({fp}); compare it with the host's own (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); any other key is refused from now on"),
            )
            .await;
        }
        Ok(probe(&target, &self.ssh, self.probe_timeout).await?)
    }

    /// How to reach the host, its credentials opened.
    pub fn target(&self, host: &Host) -> Result<SshTarget, SealError> {
        let secret = self.key.open(&host.credentials, &host.id)?;
        Ok(SshTarget {
            address: host.address.clone(),
            port: host.port,
            user: host.user.clone(),
            auth: match host.auth_kind {
                super::model::AuthKind::PrivateKey => SshAuth::PrivateKey(secret),
                super::model::AuthKind::Password => SshAuth::Password(secret),
            },
            host_key: host.host_key.clone(),
        })
    }

    pub async fn list(&self) -> Result<Vec<HostView>, HostError> {
        Ok(self
            .store
            .hosts()
            .await?
            .iter()
            .map(HostView::from)
            .collect())
    }

    /// One host with its newest events.
    pub async fn view(&self, id: &str) -> Result<HostView, HostError> {
        let host = self.get(id).await?;
        let mut view = HostView::from(&host);
        view.events = Some(self.store.host_events(&host.id, EVENTS_SHOWN).await?);
        Ok(view)
    }

    pub async fn get(&self, id: &str) -> Result<Host, HostError> {
        self.store
            .host(id)
            .await?
            .ok_or_else(|| HostError::NotFound(id.to_string()))
    }

    /// Removes a host no launch holds.
    pub async fn delete(&self, id: &str) -> Result<(), HostError> {
        let host = self.get(id).await?;
        if host.status.is_held() || !self.store.delete_host(&host.id).await? {
            let now = self.get(&host.id).await?;
            return Err(in_use(&now));
        }
        tracing::info!(host = %host.name, host_id = %host.id, "host removed");
        Ok(())
    }

    /// Takes a free host that fits a launch for `job_id`: the first available one, by name,
    /// with the GPU type and count and every label asked for. The host this job already holds
    /// (a takeover) is returned as it is.
    pub async fn claim(
        &self,
        job_id: &str,
        gpu: Option<&str>,
        gpu_count: u32,
        labels: &BTreeMap<String, String>,
    ) -> Result<Host, ClaimError> {
        for _ in 0..8 {
            let hosts = self.store.hosts().await?;
            if let Some(held) = hosts.iter().find(|h| h.job_id.as_deref() == Some(job_id)) {
                return Ok(held.clone());
            }
            let mut why = Vec::new();
            let mut fitting = Vec::new();
            for h in &hosts {
                match h.mismatch(gpu, gpu_count, labels) {
                    Some(m) => why.push(format!("{} {m}", h.name)),
                    None if h.status == HostStatus::Available => fitting.push(h.clone()),
                    None => why.push(format!("{} is {}", h.name, h.status.as_str())),
                }
            }
            let Some(mut host) = fitting.into_iter().next() else {
                let wanted = match gpu {
                    Some(g) => format!("{gpu_count} × {g}"),
                    None => "a launch".to_string(),
                };
                let labels_note = if labels.is_empty() {
                    String::new()
                } else {
                    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(" with labels {}", l.join(", "))
                };
                let message = if hosts.is_empty() {
                    "no SSH host is registered (POST /admin/hosts adds one)".to_string()
                } else {
                    format!(
                        "no free SSH host fits {wanted}{labels_note}: {}",
                        why.join("; ")
                    )
                };
                return Err(ClaimError::NoneFree(message));
            };
            host.status = HostStatus::InUse;
            host.job_id = Some(job_id.to_string());
            host.reason = None;
            host.updated_at = now_ms();
            if self.store.save_host(&mut host).await? {
                self.event(
                    &host.id,
                    "claimed",
                    &format!("taken by launch job {job_id}"),
                )
                .await;
                return Ok(host);
            }
            // Another launch took it first: look again.
        }
        Err(ClaimError::NoneFree(
            "every fitting SSH host was taken by other launches meanwhile".into(),
        ))
    }

    /// The host a launch job holds, if any.
    pub async fn held_by(&self, job_id: &str) -> Result<Option<Host>, StoreError> {
        Ok(self
            .store
            .hosts()
            .await?
            .into_iter()
            .find(|h| h.job_id.as_deref() == Some(job_id)))
    }

    /// Gives the host back after the job's teardown removed everything: `available` again.
    pub async fn release(&self, host_id: &str, job_id: &str) -> Result<(), StoreError> {
        self.settle(
            host_id,
            job_id,
            HostStatus::Available,
            None,
            "released",
            &format!("launch job {job_id} is gone from the host; it is free again"),
        )
        .await
    }

    /// The job's teardown could not reach the host: it stays held, `teardown_pending`, until a
    /// retry removes the units and files.
    pub async fn teardown_failed(
        &self,
        host_id: &str,
        job_id: &str,
        why: &str,
    ) -> Result<(), StoreError> {
        self.settle(
            host_id,
            job_id,
            HostStatus::TeardownPending,
            Some(why.to_string()),
            "teardown_failed",
            &format!("could not remove launch job {job_id} from the host ({why}); retried"),
        )
        .await
    }

    async fn settle(
        &self,
        host_id: &str,
        job_id: &str,
        status: HostStatus,
        reason: Option<String>,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        for _ in 0..8 {
            let Some(mut host) = self.store.host(host_id).await? else {
                return Ok(());
            };
            if host.job_id.as_deref() != Some(job_id) {
                return Ok(());
            }
            if host.status == status && host.reason == reason {
                return Ok(());
            }
            host.status = status;
            host.reason = reason.clone();
            if status == HostStatus::Available {
                host.job_id = None;
            }
            host.updated_at = now_ms();
            if self.store.save_host(&mut host).await? {
                self.event(host_id, kind, message).await;
                tracing::info!(host = %host.name, host_id, job_id, status = status.as_str(), "{message}");
                return Ok(());
            }
        }
        Err(StoreError::Corrupt(format!(
            "host {host_id} kept changing while launch job {job_id} tried to settle it"
        )))
    }

    /// Records an event; a failure to write it is logged, never fatal.
    async fn event(&self, host_id: &str, kind: &str, message: &str) {
        if let Err(e) = self
            .store
            .insert_host_event(host_id, now_ms(), kind, message)
            .await
        {
            tracing::warn!(host_id, kind, error = %e, "could not record a host event");
        }
    }
}

fn in_use(host: &Host) -> HostError {
    HostError::InUse {
        name: host.name.clone(),
        status: host.status.as_str(),
        job: host.job_id.clone().unwrap_or_default(),
    }
}

/// A probe's findings in one line.
fn summary(p: &HostProbe) -> String {
    let gpus = if p.gpus.is_empty() {
        "no GPU".to_string()
    } else {
        let names: Vec<String> = p
            .gpus
            .iter()
            .map(|g| format!("{} ({} MiB)", g.name, g.memory_mb))
            .collect();
        names.join(", ")
    };
    format!(
        "{} {} {}; {gpus}; {:.0} GB free; {}",
        p.os,
        p.kernel,
        p.arch,
        p.disk_free_gb,
        if p.systemd { "systemd" } else { "no systemd" }
    )
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
enum ProbeFailure {
    #[error(transparent)]
    Sealed(#[from] SealError),
    #[error(transparent)]
    Ssh(SshError),
    #[error(transparent)]
    Probe(ProbeError),
}

impl From<SshError> for ProbeFailure {
    fn from(e: SshError) -> Self {
        ProbeFailure::Ssh(e)
    }
}

impl From<ProbeError> for ProbeFailure {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Ssh(e) => ProbeFailure::Ssh(e),
            other => ProbeFailure::Probe(other),
        }
    }
}
