//! The SSH client the `ssh` provider uses (the system's OpenSSH client), against a real OpenSSH
//! server on 127.0.0.1 (`tests/common/sshd.rs`): key and password logins, trust on first use of
//! the host key, a changed host key refused, wrong credentials and an unreachable host told apart,
//! a remote command's output and exit code, and no secret in any error.

mod common;

use std::time::Duration;

use common::Sshd;
use skylaunch::ssh::{fingerprint, SshAuth, SshError, SshSettings, SshTarget};

fn target(sshd: &Sshd, auth: SshAuth, host_key: Option<String>) -> SshTarget {
    SshTarget {
        address: "127.0.0.1".into(),
        port: sshd.port,
        user: sshd.user.clone(),
        auth,
        host_key,
    }
}

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn key_login_learns_the_host_key_on_first_use_then_runs_commands() {
    let Some(sshd) = Sshd::start() else { return };
    let settings = SshSettings::default();
    let mut host = target(&sshd, SshAuth::PrivateKey(sshd.client_key.clone()), None);
    let learnt = host.learn_host_key(&settings).await.expect("first login");
    assert_eq!(learnt, sshd.host_key, "the key the server really has");
    let print = fingerprint(&learnt).await.unwrap();
    assert!(print.starts_with("SHA256:"), "{print}");
    host.host_key = Some(learnt);
    let out = host
        .run(
            &settings,
            "whoami; echo to-stderr >&2; cat; exit 3",
            Some(b"from stdin"),
            T,
        )
        .await
        .unwrap();
    assert_eq!(out.code, 3);
    assert_eq!(out.stdout, format!("{}\nfrom stdin", sshd.user));
    assert_eq!(out.stderr.trim(), "to-stderr");
}

#[tokio::test]
async fn password_login_works_and_a_wrong_one_is_credentials_invalid() {
    let Some(sshd) = Sshd::start() else { return };
    let settings = SshSettings::default();
    let good = target(
        &sshd,
        SshAuth::Password(sshd.password.clone()),
        Some(sshd.host_key.clone()),
    );
    let out = good.run(&settings, "echo ok", None, T).await.unwrap();
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "ok\n"),
        "{}",
        sshd.log()
    );
    let wrong = target(
        &sshd,
        SshAuth::Password("not-the-password-0123".into()),
        Some(sshd.host_key.clone()),
    );
    let e = wrong.run(&settings, "echo ok", None, T).await.unwrap_err();
    assert!(matches!(e, SshError::CredentialsInvalid { .. }), "{e:?}");
    assert!(!e.to_string().contains("not-the-password-0123"));
}

#[tokio::test]
async fn a_key_the_host_does_not_know_is_credentials_invalid() {
    let Some(sshd) = Sshd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("other");
    assert!(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    let other = std::fs::read_to_string(&key).unwrap();
    let host = target(
        &sshd,
        SshAuth::PrivateKey(other.clone()),
        Some(sshd.host_key.clone()),
    );
    let e = host
        .run(&SshSettings::default(), "true", None, T)
        .await
        .unwrap_err();
    assert!(matches!(e, SshError::CredentialsInvalid { .. }), "{e:?}");
    assert!(!format!("{e:?} {e}").contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_changed_host_key_is_refused_before_logging_in() {
    let Some(sshd) = Sshd::start() else { return };
    // Another machine's key is what was recorded for this host.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("impostor");
    assert!(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    let recorded = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let recorded: String = recorded
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let host = target(
        &sshd,
        SshAuth::Password(sshd.password.clone()),
        Some(recorded),
    );
    let e = host
        .run(
            &SshSettings::default(),
            "touch /tmp/should-not-exist",
            None,
            T,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, SshError::HostKeyMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("different host key"));
    assert!(
        !sshd
            .log()
            .contains(&format!("Accepted password for {}", sshd.user)),
        "no login happened: {}",
        sshd.log()
    );
}

#[tokio::test]
async fn an_unreachable_host_is_told_apart() {
    let Some(sshd) = Sshd::start() else { return };
    let mut host = target(
        &sshd,
        SshAuth::PrivateKey(sshd.client_key.clone()),
        Some(sshd.host_key.clone()),
    );
    // A port nothing listens on.
    host.port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = host
        .run(&SshSettings::default(), "true", None, T)
        .await
        .unwrap_err();
    assert!(matches!(e, SshError::Unreachable(_)), "{e:?}");
}

#[tokio::test]
async fn a_probe_reads_the_os_disk_gpus_and_init_system_and_changes_nothing() {
    let Some(sshd) = Sshd::start() else { return };
    let host = target(
        &sshd,
        SshAuth::PrivateKey(sshd.client_key.clone()),
        Some(sshd.host_key.clone()),
    );
    let settings = SshSettings::default();
    let before = host
        .run(&settings, "ls -A ~ | wc -l", None, T)
        .await
        .unwrap();
    let probe = skylaunch::hosts::probe(&host, &settings, T)
        .await
        .expect("probe");
    // This machine is the "host": the same OS, no GPU here, and no systemd in this container.
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let pretty = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    assert_eq!(probe.os, pretty);
    assert_eq!(probe.arch, std::env::consts::ARCH);
    assert!(probe.disk_free_gb > 0.0, "{probe:?}");
    assert_eq!(
        probe.systemd,
        std::path::Path::new("/run/systemd/system").is_dir()
    );
    if !std::process::Command::new("sh")
        .args(["-c", "command -v nvidia-smi"])
        .status()
        .unwrap()
        .success()
    {
        assert!(probe.gpus.is_empty());
    }
    let after = host
        .run(&settings, "ls -A ~ | wc -l", None, T)
        .await
        .unwrap();
    assert_eq!(
        before.stdout, after.stdout,
        "nothing was written in the home directory"
    );
}
