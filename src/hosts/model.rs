//! What a host is: the request that adds one (validated before anything is stored or any
//! connection made), the stored host with its status, and the view the API shows, which never
//! holds a credential.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use skylaunch_protocol::validate::{check_labels, check_text};

use super::probe::HostProbe;
use crate::catalog;

/// A host request that cannot be accepted: the field at fault, why, and what would work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHost {
    pub field: &'static str,
    pub message: String,
    pub suggestions: Vec<String>,
}

impl InvalidHost {
    pub fn new(field: &'static str, message: impl Into<String>) -> InvalidHost {
        InvalidHost {
            field,
            message: message.into(),
            suggestions: Vec::new(),
        }
    }
}

/// `POST /admin/hosts` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostRequest {
    /// A name unique among hosts (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Hostname or IP address skylaunch connects to.
    pub address: String,
    /// SSH port (default 22).
    #[serde(default)]
    pub port: Option<u16>,
    /// The login user.
    pub user: String,
    /// `{"private_key": "<PEM>"}` or `{"password": "…"}`: stored sealed, never shown again.
    pub auth: HostAuth,
    /// The host's public key line (`ssh-ed25519 AAAA…`); without it the key presented on first
    /// contact is recorded (trust on first use) and its fingerprint shown.
    #[serde(default)]
    pub host_key: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The GPU type launches may ask for (default: what `nvidia-smi` reports).
    #[serde(default)]
    pub gpu_type: Option<String>,
    /// How many GPUs launches may use (default: how many `nvidia-smi` lists).
    #[serde(default)]
    pub gpu_count: Option<u32>,
}

/// How skylaunch logs into a host. Never serialised back.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HostAuth {
    PrivateKey(String),
    Password(String),
}

impl std::fmt::Debug for HostAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().as_str())
    }
}

impl HostAuth {
    pub fn kind(&self) -> AuthKind {
        match self {
            HostAuth::PrivateKey(_) => AuthKind::PrivateKey,
            HostAuth::Password(_) => AuthKind::Password,
        }
    }

    pub fn secret(&self) -> &str {
        match self {
            HostAuth::PrivateKey(s) | HostAuth::Password(s) => s,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    PrivateKey,
    Password,
}

impl AuthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::PrivateKey => "private_key",
            AuthKind::Password => "password",
        }
    }

    pub fn parse(s: &str) -> Option<AuthKind> {
        [AuthKind::PrivateKey, AuthKind::Password]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Where a host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Added; not yet probed.
    Pending,
    /// Being connected to and probed.
    Probing,
    /// Probed and free: a launch may take it.
    Available,
    /// A launch holds it (`job_id`).
    InUse,
    /// The last probe failed (`reason` says why); `POST /admin/hosts/<id>/probe` tries again.
    Error,
    /// A launch's teardown could not reach it; retried until the units and files are gone.
    TeardownPending,
}

impl HostStatus {
    pub const ALL: [HostStatus; 6] = [
        HostStatus::Pending,
        HostStatus::Probing,
        HostStatus::Available,
        HostStatus::InUse,
        HostStatus::Error,
        HostStatus::TeardownPending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Pending => "pending",
            HostStatus::Probing => "probing",
            HostStatus::Available => "available",
            HostStatus::InUse => "in_use",
            HostStatus::Error => "error",
            HostStatus::TeardownPending => "teardown_pending",
        }
    }

    pub fn parse(s: &str) -> Option<HostStatus> {
        HostStatus::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether a launch holds the host.
    pub fn is_held(self) -> bool {
        matches!(self, HostStatus::InUse | HostStatus::TeardownPending)
    }
}

/// A stored host. `credentials` is sealed (see [`super::sealing`]).
#[derive(Clone)]
pub struct Host {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub auth_kind: AuthKind,
    pub credentials: String,
    pub host_key: Option<String>,
    pub host_key_fingerprint: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub gpu_type: Option<String>,
    pub gpu_count: Option<u32>,
    pub status: HostStatus,
    pub reason: Option<String>,
    pub probe: Option<HostProbe>,
    pub job_id: Option<String>,
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("address", &self.address)
            .field("port", &self.port)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// The GPU type launches match against: the operator's, else the probe's first GPU in the
    /// catalogue's spelling.
    pub fn effective_gpu_type(&self) -> Option<String> {
        self.gpu_type.clone().or_else(|| {
            self.probe
                .as_ref()?
                .gpus
                .first()
                .and_then(|g| canonical_gpu(&g.name, g.memory_mb))
                .map(str::to_string)
        })
    }

    /// How many GPUs launches may use: the operator's count, else the probe's.
    pub fn effective_gpu_count(&self) -> u32 {
        self.gpu_count.unwrap_or_else(|| {
            self.probe
                .as_ref()
                .map(|p| p.gpus.len() as u32)
                .unwrap_or(0)
        })
    }

    /// Why this host cannot serve a launch asking for `gpu` × `count` with `labels`, or `None`
    /// when it can (ignoring whether it is free).
    pub fn mismatch(
        &self,
        gpu: Option<&str>,
        count: u32,
        labels: &BTreeMap<String, String>,
    ) -> Option<String> {
        for (key, value) in labels {
            if self.labels.get(key) != Some(value) {
                return Some(format!("no label {key}={value}"));
            }
        }
        if let Some(gpu) = gpu {
            match self.effective_gpu_type() {
                Some(have) if have.eq_ignore_ascii_case(gpu) => {}
                Some(have) => return Some(format!("has {have}, not {gpu}")),
                None => return Some(format!("has no GPU, not {gpu}")),
            }
            let have = self.effective_gpu_count();
            if have < count {
                return Some(format!("has {have} × {gpu}, not {count}"));
            }
        }
        None
    }
}

/// The catalogue's name of a GPU as `nvidia-smi` names it ("NVIDIA A100-SXM4-80GB" is
/// "A100-80GB"): the longest catalogue name in it, the 80 GB A100 told apart by its memory.
pub fn canonical_gpu(smi_name: &str, memory_mb: u64) -> Option<&'static str> {
    let upper = smi_name.to_ascii_uppercase();
    let found = catalog::GPUS
        .iter()
        .filter(|g| upper.contains(&g.name.to_ascii_uppercase()))
        .max_by_key(|g| g.name.len())?;
    if found.name == "A100" && memory_mb > 50_000 {
        return Some("A100-80GB");
    }
    Some(found.name)
}

/// A host request that passed validation.
pub struct NewHost {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub auth: HostAuth,
    pub host_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub gpu_type: Option<String>,
    pub gpu_count: Option<u32>,
}

impl HostRequest {
    /// Checks every field; nothing is stored or contacted before this passes.
    pub fn validate(self) -> Result<NewHost, InvalidHost> {
        let name = self.name.trim().to_string();
        check_text("name", &name, 63).map_err(spec)?;
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(InvalidHost::new(
                "name",
                "a host name may hold only letters, digits, '-', '_' and '.'",
            ));
        }
        let address = self.address.trim().to_string();
        check_text("address", &address, 253).map_err(spec)?;
        if address.starts_with('-')
            || !address
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'))
        {
            return Err(InvalidHost::new(
                "address",
                "the address must be a hostname or an IP address",
            ));
        }
        let port = self.port.unwrap_or(22);
        if port == 0 {
            return Err(InvalidHost::new("port", "the port must be 1 to 65535"));
        }
        let user = self.user.trim().to_string();
        check_text("user", &user, 32).map_err(spec)?;
        if user.starts_with('-')
            || !user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(InvalidHost::new(
                "user",
                "the user must be a login name (letters, digits, '-', '_', '.')",
            ));
        }
        match &self.auth {
            HostAuth::PrivateKey(key) => {
                if !key.contains("PRIVATE KEY-----") || key.len() > 16 * 1024 {
                    return Err(InvalidHost::new(
                        "auth.private_key",
                        "expected an unencrypted private key in PEM or OpenSSH form (-----BEGIN … PRIVATE KEY-----), at most 16 KiB",
                    ));
                }
            }
            HostAuth::Password(pw) => {
                if pw.is_empty() || pw.len() > 1024 || pw.contains(['\n', '\0']) {
                    return Err(InvalidHost::new(
                        "auth.password",
                        "the password must be 1 to 1024 characters on one line",
                    ));
                }
            }
        }
        let host_key = match self.host_key {
            None => None,
            Some(line) => Some(check_host_key(&line)?),
        };
        check_labels(&self.labels).map_err(spec)?;
        let gpu_type = match self.gpu_type {
            None => None,
            Some(g) => match catalog::gpu(&g) {
                Some(known) => Some(known.name.to_string()),
                None => {
                    let mut e = InvalidHost::new("gpu_type", format!("unknown GPU type {g:?}"));
                    e.suggestions = catalog::closest(&g, catalog::GPUS.iter().map(|g| g.name));
                    return Err(e);
                }
            },
        };
        if let Some(n) = self.gpu_count {
            if n > 64 {
                return Err(InvalidHost::new("gpu_count", "at most 64 GPUs per host"));
            }
        }
        Ok(NewHost {
            name,
            address,
            port,
            user,
            auth: self.auth,
            host_key,
            labels: self.labels,
            gpu_type,
            gpu_count: self.gpu_count,
        })
    }
}

/// A public host key line, reduced to `<type> <base64>` (a comment and a leading host name are
/// dropped).
pub fn check_host_key(line: &str) -> Result<String, InvalidHost> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = fields
        .iter()
        .position(|f| f.starts_with("ssh-") || f.starts_with("ecdsa-") || f.starts_with("sk-"));
    let bad = || {
        InvalidHost::new(
            "host_key",
            "expected an OpenSSH public host key line such as `ssh-ed25519 AAAA…` (from /etc/ssh/ssh_host_ed25519_key.pub or `ssh-keyscan`)",
        )
    };
    let at = at.ok_or_else(bad)?;
    let (kind, blob) = (fields[at], fields.get(at + 1).ok_or_else(bad)?);
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 8192
            && s.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '@' | '.')
            })
    };
    if !ok(kind) || !ok(blob) {
        return Err(bad());
    }
    Ok(format!("{kind} {blob}"))
}

fn spec(e: skylaunch_protocol::validate::Invalid) -> InvalidHost {
    let field = match e.field.as_str() {
        "name" => "name",
        "address" => "address",
        "user" => "user",
        _ => "labels",
    };
    InvalidHost::new(field, e.message)
}

/// A host as the API shows it: everything but the credentials.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostView {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// `private_key` or `password`; the credential itself is never shown.
    pub auth: AuthKind,
    pub host_key_fingerprint: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The GPU type launches match (given, or from the probe).
    pub gpu_type: Option<String>,
    pub gpu_count: u32,
    pub status: HostStatus,
    pub reason: Option<String>,
    pub probe: Option<HostProbe>,
    /// The launch job holding the host.
    pub job_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<HostEvent>>,
}

impl From<&Host> for HostView {
    fn from(h: &Host) -> HostView {
        HostView {
            id: h.id.clone(),
            name: h.name.clone(),
            address: h.address.clone(),
            port: h.port,
            user: h.user.clone(),
            auth: h.auth_kind,
            host_key_fingerprint: h.host_key_fingerprint.clone(),
            labels: h.labels.clone(),
            gpu_type: h.effective_gpu_type(),
            gpu_count: h.effective_gpu_count(),
            status: h.status,
            reason: h.reason.clone(),
            probe: h.probe.clone(),
            job_id: h.job_id.clone(),
            created_at: crate::clock::rfc3339(h.created_at),
            updated_at: crate::clock::rfc3339(h.updated_at),
            events: None,
        }
    }
}

/// Something that happened to a host, in plain words.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HostEvent {
    pub at: String,
    /// `added`, `probing`, `probed`, `probe_failed`, `host_key_learnt`, `host_key_mismatch`,
    /// `claimed`, `released`, `teardown_failed`.
    pub kind: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_names_map_to_the_catalogue() {
        assert_eq!(canonical_gpu("NVIDIA L4", 23034), Some("L4"));
        assert_eq!(canonical_gpu("NVIDIA L40S", 46068), Some("L40S"));
        assert_eq!(canonical_gpu("NVIDIA A100-SXM4-40GB", 40960), Some("A100"));
        assert_eq!(
            canonical_gpu("NVIDIA A100-SXM4-80GB", 81920),
            Some("A100-80GB")
        );
        assert_eq!(canonical_gpu("NVIDIA H100 80GB HBM3", 81559), Some("H100"));
        assert_eq!(canonical_gpu("Tesla T4", 15360), Some("T4"));
        assert_eq!(canonical_gpu("NVIDIA GeForce RTX 4090", 24564), None);
    }

    #[test]
    fn host_keys_are_reduced_to_type_and_key() {
        assert_eq!(
            check_host_key("[127.0.0.1]:2222 ssh-ed25519 AAAAC3Nza root@box").unwrap(),
            "ssh-ed25519 AAAAC3Nza"
        );
        assert!(check_host_key("not a key").is_err());
        assert!(check_host_key("ssh-ed25519").is_err());
        assert!(check_host_key("ssh-ed25519 AAAA$(reboot)").is_err());
    }
}
