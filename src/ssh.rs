//! Running commands on a machine over SSH, through the system's OpenSSH client (`ssh`), for the
//! `ssh` provider (hosts the operator owns).
//!
//! Why the OpenSSH client and not an SSH library: it is the maintained, audited implementation
//! every operator already trusts and configures, it costs nothing to build, and it does host
//! key checking, key types and ciphers the way the operator's own `ssh` does. Everything it
//! needs is given per call in a private temporary directory (mode 0700): the private key, the
//! password (read by an askpass helper, never on a command line or in an environment
//! variable), and a known-hosts file holding the one host key this host may present, under a
//! fixed alias so the address and port do not matter. No agent, no config file, no global
//! known hosts are used.
//!
//! Host keys: with a key recorded, any other key is refused ([`SshError::HostKeyMismatch`]).
//! Without one, [`SshTarget::learn_host_key`] connects once accepting the key the host
//! presents (trust on first use) and returns it, to be recorded and shown with its fingerprint.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The alias every host's key is recorded under in the per-call known-hosts file.
const HOST_ALIAS: &str = "skylaunch-host";

/// How a host is logged into. The secrets never show in `Debug`.
#[derive(Clone)]
pub enum SshAuth {
    /// An OpenSSH or PEM private key (unencrypted).
    PrivateKey(String),
    Password(String),
}

impl std::fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SshAuth::PrivateKey(_) => f.write_str("PrivateKey(<secret>)"),
            SshAuth::Password(_) => f.write_str("Password(<secret>)"),
        }
    }
}

/// One host and how to reach it.
#[derive(Clone, Debug)]
pub struct SshTarget {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub auth: SshAuth,
    /// The host's public key as OpenSSH writes it (`ssh-ed25519 AAAA...`); `None` until learnt.
    pub host_key: Option<String>,
}

/// Where the `ssh` client is and how long it may take to connect.
#[derive(Clone, Debug)]
pub struct SshSettings {
    pub ssh_bin: PathBuf,
    pub connect_timeout: Duration,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            ssh_bin: PathBuf::from("ssh"),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a command could not run on the host. The messages name no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// The host refused the key or password.
    #[error("the host refused the login of {user}: {detail}")]
    CredentialsInvalid { user: String, detail: String },
    /// The host presented another key than the one recorded.
    #[error("the host presented a different host key than the one recorded ({detail}); if the machine was reinstalled, check its new key and record it, else someone may be intercepting the connection")]
    HostKeyMismatch { detail: String },
    /// Nothing answered, or the connection broke.
    #[error("could not reach the host: {0}")]
    Unreachable(String),
    /// The command did not finish in time.
    #[error("the command did not finish within {0:?}")]
    Timeout(Duration),
    /// The `ssh` client could not be started, or a local file not written.
    #[error("could not run ssh: {0}")]
    Local(String),
}

/// What a remote command printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The per-call files, removed with the directory when dropped.
struct CallDir {
    dir: tempfile::TempDir,
}

impl CallDir {
    fn new() -> Result<CallDir, SshError> {
        let dir = tempfile::Builder::new()
            .prefix("skylaunch-ssh-")
            .tempdir()
            .map_err(|e| SshError::Local(e.to_string()))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| SshError::Local(e.to_string()))?;
        Ok(CallDir { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file readable by this user only (and executable when asked).
    fn write(&self, name: &str, content: &[u8], mode: u32) -> Result<PathBuf, SshError> {
        let path = self.path(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| SshError::Local(e.to_string()))?;
        f.write_all(content)
            .map_err(|e| SshError::Local(e.to_string()))?;
        Ok(path)
    }
}

impl SshTarget {
    /// Runs `command` (a shell command line) on the host, with `stdin` fed to it, within
    /// `timeout`. A command that exits non-zero is an [`Output`] with its code, not an error;
    /// an error means the command could not run.
    pub async fn run(
        &self,
        settings: &SshSettings,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        self.run_with(settings, command, Input::bytes(stdin), timeout, None)
            .await
    }

    /// Connects once, accepting the key the host presents, and returns that key
    /// (`<type> <base64>`): trust on first use. Also checks the login works.
    pub async fn learn_host_key(&self, settings: &SshSettings) -> Result<String, SshError> {
        let call = CallDir::new()?;
        call.write("known_hosts", b"", 0o600)?;
        let mut cmd = self.command(settings, &call, "accept-new")?;
        cmd.arg("true");
        let out = self
            .execute(cmd, None, settings.connect_timeout * 3)
            .await?;
        if out.code != 0 {
            return Err(SshError::Unreachable(format!(
                "`true` exited {} on the host",
                out.code
            )));
        }
        let known = std::fs::read_to_string(call.path("known_hosts"))
            .map_err(|e| SshError::Local(e.to_string()))?;
        known
            .lines()
            .find_map(|line| {
                let mut parts = line.split_whitespace();
                let _alias = parts.next()?;
                let kind = parts.next()?;
                let blob = parts.next()?;
                Some(format!("{kind} {blob}"))
            })
            .ok_or_else(|| SshError::Local("ssh recorded no host key".into()))
    }

    /// The `ssh` command line for this host: its credentials, the per-call known hosts, and
    /// nothing from the user's own configuration.
    fn command(
        &self,
        settings: &SshSettings,
        call: &CallDir,
        strict: &str,
    ) -> Result<Command, SshError> {
        let mut cmd = Command::new(&settings.ssh_bin);
        let known = call.path("known_hosts");
        cmd.args(["-F", "/dev/null", "-T", "-p", &self.port.to_string()])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                &format!("HostKeyAlias={HOST_ALIAS}"),
                "-o",
                &format!("StrictHostKeyChecking={strict}"),
                "-o",
                "HashKnownHosts=no",
                "-o",
                "UpdateHostKeys=no",
                "-o",
                &format!(
                    "ConnectTimeout={}",
                    settings.connect_timeout.as_secs().max(1)
                ),
                "-o",
                "ServerAliveInterval=10",
                "-o",
                "ServerAliveCountMax=3",
                "-o",
                "IdentityAgent=none",
                "-o",
                "LogLevel=ERROR",
            ])
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("DISPLAY")
            .kill_on_drop(true);
        match &self.auth {
            SshAuth::PrivateKey(pem) => {
                let mut pem = pem.trim_end().to_string();
                pem.push('\n');
                let key = call.write("id", pem.as_bytes(), 0o600)?;
                cmd.arg("-i")
                    .arg(&key)
                    .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
                    .args(["-o", "PasswordAuthentication=no"]);
            }
            SshAuth::Password(password) => {
                let secret = call.write("password", password.as_bytes(), 0o600)?;
                let askpass = call.write(
                    "askpass",
                    format!("#!/bin/sh\nexec cat '{}'\n", shell_quoted(&secret)).as_bytes(),
                    0o700,
                )?;
                cmd.env("SSH_ASKPASS", &askpass)
                    .env("SSH_ASKPASS_REQUIRE", "force")
                    .args(["-o", "PubkeyAuthentication=no"])
                    .args([
                        "-o",
                        "PreferredAuthentications=password,keyboard-interactive",
                    ])
                    .args(["-o", "NumberOfPasswordPrompts=1"]);
            }
        }
        cmd.arg(format!("{}@{}", self.user, self.address));
        Ok(cmd)
    }

    async fn execute(
        &self,
        cmd: Command,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        self.execute_streaming(cmd, Input::bytes(stdin), timeout, None)
            .await
    }

    /// Runs `command` with the local file `path` as its standard input (streamed, never held
    /// in memory): how binaries are copied onto the host.
    pub async fn upload(
        &self,
        settings: &SshSettings,
        path: &Path,
        command: &str,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let file = std::fs::File::open(path)
            .map_err(|e| SshError::Local(format!("cannot read {}: {e}", path.display())))?;
        self.run_with(settings, command, Input::File(file), timeout, None)
            .await
    }

    /// Runs `command` like [`run`](Self::run), sending each line it prints to `lines` as it
    /// comes (`true` for standard error), for a job log that follows a slow remote step.
    pub async fn run_streaming(
        &self,
        settings: &SshSettings,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        lines: tokio::sync::mpsc::UnboundedSender<(bool, String)>,
    ) -> Result<Output, SshError> {
        self.run_with(settings, command, Input::bytes(stdin), timeout, Some(lines))
            .await
    }

    async fn run_with(
        &self,
        settings: &SshSettings,
        command: &str,
        stdin: Input<'_>,
        timeout: Duration,
        lines: Option<tokio::sync::mpsc::UnboundedSender<(bool, String)>>,
    ) -> Result<Output, SshError> {
        let Some(key) = &self.host_key else {
            return Err(SshError::HostKeyMismatch {
                detail: "no host key is recorded for this host yet".into(),
            });
        };
        let call = CallDir::new()?;
        call.write(
            "known_hosts",
            format!("{HOST_ALIAS} {}\n", key.trim()).as_bytes(),
            0o600,
        )?;
        let mut cmd = self.command(settings, &call, "yes")?;
        cmd.arg(command);
        self.execute_streaming(cmd, stdin, timeout, lines).await
    }

    async fn execute_streaming(
        &self,
        mut cmd: Command,
        stdin: Input<'_>,
        timeout: Duration,
        lines: Option<tokio::sync::mpsc::UnboundedSender<(bool, String)>>,
    ) -> Result<Output, SshError> {
        let bytes = match stdin {
            Input::None => {
                cmd.stdin(Stdio::null());
                None
            }
            Input::Bytes(b) => {
                cmd.stdin(Stdio::piped());
                Some(b)
            }
            Input::File(f) => {
                cmd.stdin(Stdio::from(f));
                None
            }
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            SshError::Local(format!("{} ({e})", "the ssh client could not be started"))
        })?;
        if let (Some(input), Some(mut pipe)) = (bytes, child.stdin.take()) {
            let input = input.to_vec();
            tokio::spawn(async move {
                let _ = pipe.write_all(&input).await;
                let _ = pipe.shutdown().await;
            });
        }
        let stdout = child
            .stdout
            .take()
            .map(|o| collect(o, false, lines.clone()));
        let stderr = child.stderr.take().map(|e| collect(e, true, lines));
        let finished = async {
            let (out, err) = match (stdout, stderr) {
                (Some(o), Some(e)) => tokio::join!(o, e),
                _ => (String::new(), String::new()),
            };
            (child.wait().await, out, err)
        };
        let (status, stdout, stderr) = match tokio::time::timeout(timeout, finished).await {
            Ok((status, out, err)) => (
                status.map_err(|e| SshError::Local(e.to_string()))?,
                out,
                err,
            ),
            Err(_) => return Err(SshError::Timeout(timeout)),
        };
        let code = status.code().unwrap_or(-1);
        // 255 is ssh's own failure (the remote command's codes pass through otherwise).
        if code == 255 {
            if let Some(e) = classify(&self.user, &stderr) {
                return Err(e);
            }
        }
        Ok(Output {
            code,
            stdout,
            stderr,
        })
    }
}

/// What a remote command reads on its standard input.
enum Input<'a> {
    None,
    Bytes(&'a [u8]),
    File(std::fs::File),
}

impl<'a> Input<'a> {
    fn bytes(b: Option<&'a [u8]>) -> Input<'a> {
        b.map_or(Input::None, Input::Bytes)
    }
}

/// Most of a stream kept in an [`Output`]: the end of a long log is what explains a failure.
const KEEP: usize = 1 << 20;

/// Reads a stream line by line, sending each on (when asked) and keeping its last [`KEEP`]
/// bytes.
async fn collect(
    stream: impl tokio::io::AsyncRead + Unpin,
    stderr: bool,
    lines: Option<tokio::sync::mpsc::UnboundedSender<(bool, String)>>,
) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut kept = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                if let Some(tx) = &lines {
                    let _ = tx.send((stderr, text.trim_end_matches(['\n', '\r']).to_string()));
                }
                kept.push_str(&text);
                if kept.len() > 2 * KEEP {
                    let mut cut = kept.len() - KEEP;
                    while !kept.is_char_boundary(cut) {
                        cut += 1;
                    }
                    kept.drain(..cut);
                }
            }
        }
    }
    kept
}

/// What ssh's own error output (exit 255) means.
fn classify(user: &str, stderr: &str) -> Option<SshError> {
    let last = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_string();
    if stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        return Some(SshError::HostKeyMismatch { detail: last });
    }
    if stderr.contains("Permission denied") || stderr.contains("Too many authentication failures") {
        return Some(SshError::CredentialsInvalid {
            user: user.to_string(),
            detail: last,
        });
    }
    let unreachable = [
        "Connection refused",
        "Connection timed out",
        "timed out",
        "No route to host",
        "Could not resolve hostname",
        "Network is unreachable",
        "Connection closed",
        "Connection reset",
        "Broken pipe",
    ];
    if unreachable.iter().any(|p| stderr.contains(p)) {
        return Some(SshError::Unreachable(last));
    }
    None
}

fn shell_quoted(path: &Path) -> String {
    path.display().to_string().replace('\'', "'\\''")
}

/// The SHA-256 fingerprint of a public key line, as `ssh-keygen -l` shows it
/// (`SHA256:...`), computed by `ssh-keygen` itself.
pub async fn fingerprint(key: &str) -> Result<String, SshError> {
    let call = CallDir::new()?;
    let file = call.write("key.pub", format!("{}\n", key.trim()).as_bytes(), 0o600)?;
    let out = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(&file)
        .output()
        .await
        .map_err(|e| SshError::Local(format!("ssh-keygen could not be started ({e})")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .map(str::to_string)
        .ok_or_else(|| SshError::Local(format!("not an OpenSSH public key: {:?}", key.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_failures_are_told_apart() {
        let refused = "skytest@127.0.0.1: Permission denied (publickey,password).\n";
        assert!(matches!(
            classify("skytest", refused),
            Some(SshError::CredentialsInvalid { .. })
        ));
        let changed = "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n...\nHost key verification failed.\n";
        assert!(matches!(
            classify("u", changed),
            Some(SshError::HostKeyMismatch { .. })
        ));
        let down = "ssh: connect to host 127.0.0.1 port 22023: Connection refused\n";
        assert_eq!(
            classify("u", down),
            Some(SshError::Unreachable(down.trim().to_string()))
        );
        assert_eq!(
            classify("u", "bash: line 1: nope: command not found\n"),
            None
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let t = SshTarget {
            address: "10.0.0.5".into(),
            port: 22,
            user: "gpu".into(),
            auth: SshAuth::Password("hunter2".into()),
            host_key: None,
        };
        assert!(!format!("{t:?}").contains("hunter2"));
        let k = SshAuth::PrivateKey("-----BEGIN OPENSSH PRIVATE KEY-----".into());
        assert!(!format!("{k:?}").contains("BEGIN"));
    }
}
