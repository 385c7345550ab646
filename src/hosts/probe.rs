//! Probing a host over SSH: one POSIX shell script, run as the login user, prints `key=value`
//! lines (the OS, each GPU `nvidia-smi` lists with its memory, the free disk in the home
//! directory, whether systemd is the init system), parsed into a [`HostProbe`]. Nothing is
//! installed or changed on the host.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ssh::{SshError, SshSettings, SshTarget};

/// What runs on the host. `nvidia-smi` missing or failing means no GPU, not an error.
const SCRIPT: &str = r#"
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os=${PRETTY_NAME:-$(uname -s)}"
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits 2>/dev/null | sed 's/^/gpu=/'
fi
echo "disk_free_kb=$(df -Pk "${HOME:-/}" 2>/dev/null | awk 'NR==2 {print $4}')"
if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi
"#;

/// One GPU of a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostGpu {
    pub name: String,
    pub memory_mb: u64,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostProbe {
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub gpus: Vec<HostGpu>,
    pub disk_free_gb: f64,
    /// Services can run as systemd units (else the agent and model server cannot be kept
    /// running across a reboot).
    pub systemd: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// The script ran but its output made no sense (not a POSIX shell, say).
    #[error("the host's answer to the probe was not understood (exit {code}): {detail}")]
    Unreadable { code: i32, detail: String },
}

/// Probes the host (its host key must be recorded).
pub async fn probe(
    host: &SshTarget,
    settings: &SshSettings,
    timeout: Duration,
) -> Result<HostProbe, ProbeError> {
    let out = host
        .run(settings, "sh -s", Some(SCRIPT.as_bytes()), timeout)
        .await?;
    parse(&out.stdout).ok_or_else(|| ProbeError::Unreadable {
        code: out.code,
        detail: out
            .stderr
            .lines()
            .chain(out.stdout.lines())
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .chars()
            .take(300)
            .collect(),
    })
}

/// The script's output as a probe; `None` without the lines every host prints.
pub fn parse(output: &str) -> Option<HostProbe> {
    let mut os = None;
    let mut kernel = String::new();
    let mut arch = String::new();
    let mut gpus = Vec::new();
    let mut disk_free_gb = None;
    let mut systemd = None;
    for line in output.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "os" => os = Some(value.to_string()),
            "kernel" => kernel = value.to_string(),
            "arch" => arch = value.to_string(),
            "gpu" => {
                if let Some((name, memory)) = value.rsplit_once(',') {
                    if let Ok(memory_mb) = memory.trim().parse::<f64>() {
                        gpus.push(HostGpu {
                            name: name.trim().to_string(),
                            memory_mb: memory_mb as u64,
                        });
                    }
                }
            }
            "disk_free_kb" => {
                disk_free_gb = value
                    .parse::<f64>()
                    .ok()
                    .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
            }
            "systemd" => systemd = Some(value == "yes"),
            _ => {}
        }
    }
    Some(HostProbe {
        os: os.filter(|o| !o.is_empty())?,
        kernel,
        arch,
        gpus,
        disk_free_gb: disk_free_gb.unwrap_or(0.0),
        systemd: systemd?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_host_is_read_with_each_gpu() {
        let out = "os=Ubuntu 22.04.4 LTS\nkernel=5.15.0-105-generic\narch=x86_64\n\
                   gpu=NVIDIA L4, 23034\ngpu=NVIDIA L4, 23034\ndisk_free_kb=471859200\nsystemd=yes\n";
        let p = parse(out).unwrap();
        assert_eq!(p.os, "Ubuntu 22.04.4 LTS");
        assert_eq!(
            p.gpus,
            vec![
                HostGpu {
                    name: "NVIDIA L4".into(),
                    memory_mb: 23034
                };
                2
            ]
        );
        assert_eq!(p.disk_free_gb, 450.0);
        assert!(p.systemd);
    }

    #[test]
    fn a_host_without_gpus_or_systemd_is_still_a_probe_and_garbage_is_not() {
        let p = parse(
            "os=Alpine Linux v3.19\nkernel=6.6\narch=aarch64\ndisk_free_kb=1048576\nsystemd=no\n",
        )
        .unwrap();
        assert!(p.gpus.is_empty());
        assert_eq!(p.disk_free_gb, 1.0);
        assert!(!p.systemd);
        assert_eq!(parse("Welcome to the router CLI\n> "), None);
        assert_eq!(parse("os=x\n"), None, "a cut-short answer");
    }
}
