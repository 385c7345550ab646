//! A real OpenSSH server (Debian's `openssh-server`) on 127.0.0.1 at a free port, with a
//! throwaway host key, for the SSH tests. It logs in the throwaway user `scripts/test` made
//! (`SKYLAUNCH_TEST_SSH_USER`, password in `SKYLAUNCH_TEST_SSH_PASSWORD`), by a key made here or
//! by that password. Under `CI=true` a missing server or user fails the test; elsewhere the test
//! is skipped with a loud message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::in_ci;

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// A private key the server accepts, and its host's public key.
    pub client_key: String,
    pub host_key: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing(what: &str) -> Option<Sshd> {
    if in_ci() {
        panic!("{what} is required under CI=true (scripts/test installs it)");
    }
    eprintln!("!!! SKIPPED: {what} is missing; run scripts/test to install it");
    None
}

fn keygen(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let private = std::fs::read_to_string(&path).unwrap();
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (private, public.trim().to_string())
}

/// The OpenSSH server: `SKYLAUNCH_TEST_SSHD`, else Debian's.
fn server_bin() -> PathBuf {
    PathBuf::from(std::env::var("SKYLAUNCH_TEST_SSHD").unwrap_or_else(|_| "/usr/sbin/sshd".into()))
}

/// Starts sshd in the foreground with the configuration in `dir`, logging there.
fn spawn(bin: &Path, dir: &Path) -> Child {
    Command::new(bin)
        .arg("-D")
        .arg("-f")
        .arg(dir.join("sshd_config"))
        .arg("-E")
        .arg(dir.join("sshd.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd starts")
}

/// Waits (up to 5 s) for the server to accept connections on `port`; `false` if it exited.
fn listening(child: &mut Child, port: u16) -> bool {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A fresh key pair no server knows: (private key, public key line).
pub fn keygen_in_tempdir() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "stranger")
}

impl Sshd {
    /// Starts a server; `None` (skipped) outside CI when sshd or the test user is missing.
    pub fn start() -> Option<Sshd> {
        let bin = server_bin();
        if !bin.is_file() {
            return missing(&format!("the OpenSSH server ({})", bin.display()));
        }
        let (Ok(user), Ok(password)) = (
            std::env::var("SKYLAUNCH_TEST_SSH_USER"),
            std::env::var("SKYLAUNCH_TEST_SSH_PASSWORD"),
        ) else {
            return missing("the SSH test user (SKYLAUNCH_TEST_SSH_USER and _PASSWORD)");
        };
        let dir = tempfile::tempdir().unwrap();
        let (_, host_public) = keygen(dir.path(), "host_key");
        let (client_private, client_public) = keygen(dir.path(), "client_key");
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{client_public}\n"),
        )
        .unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\n\
                 AuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\n\
                 PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM yes\n\
                 AllowUsers {user}\nPidFile {dir}/sshd.pid\nLogLevel VERBOSE\n",
                dir = dir.path().display()
            );
            std::fs::write(dir.path().join("sshd_config"), config).unwrap();
            let mut child = spawn(&bin, dir.path());
            if listening(&mut child, port) {
                return Some(Sshd {
                    child,
                    port,
                    user: user.clone(),
                    password: password.clone(),
                    client_key: client_private,
                    host_key: host_public
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" "),
                    dir,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "sshd did not start: {}",
            std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default()
        );
    }

    /// Stops the server (a host gone unreachable); [`resume`](Self::resume) brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again, on the same port with the same keys.
    pub fn resume(&mut self) {
        for _ in 0..100 {
            self.child = spawn(&server_bin(), self.dir.path());
            if listening(&mut self.child, self.port) {
                return;
            }
            // The port may still be held for a moment after the old server went.
            let _ = self.child.kill();
            let _ = self.child.wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("sshd did not start again: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}
