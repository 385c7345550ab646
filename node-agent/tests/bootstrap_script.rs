//! `scripts/bootstrap-agent.sh` installs the agent as a systemd service: run against a temporary
//! root with systemctl skipped, installing the agent binary this build produced.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const TOKEN: &str = "secret-node-token-abc";

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bootstrap-agent.sh")
}

/// Runs the script in a clean environment: the three required settings (minus any named in
/// `leave_out`), a model server URL, and `extra`.
fn bootstrap(root: &Path, leave_out: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SKYLAUNCH_BOOTSTRAP_ROOT", root)
        .env("SKYLAUNCH_BOOTSTRAP_NO_SYSTEMCTL", "1")
        .env(
            "SKYLAUNCH_AGENT_BINARY",
            env!("CARGO_BIN_EXE_skylaunch-agent"),
        )
        .env("SKYLAUNCH_MODEL_SERVER_URL", "http://127.0.0.1:8000");
    let required = [
        ("SKYLAUNCH_CONTROL_PLANE_URL", "http://127.0.0.1:8080"),
        ("SKYLAUNCH_NODE_ID", "node-123"),
        ("SKYLAUNCH_NODE_TOKEN", TOKEN),
    ];
    for (name, value) in required {
        if !leave_out.contains(&name) {
            cmd.env(name, value);
        }
    }
    cmd.envs(extra.iter().copied());
    cmd.output().expect("bash runs")
}

fn written(root: &Path) -> usize {
    std::fs::read_dir(root).unwrap().count()
}

#[test]
fn installs_binary_private_env_file_and_unit() {
    let root = tempfile::tempdir().unwrap();
    let out = bootstrap(
        root.path(),
        &[],
        &[("SKYLAUNCH_AGENT_URL", "https://x/agent")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(TOKEN), "the token is never printed");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(TOKEN));

    let env_file = root.path().join("etc/skylaunch/agent.env");
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.contains("SKYLAUNCH_NODE_TOKEN='secret-node-token-abc'\n"),
        "{env}"
    );
    assert!(env.contains("SKYLAUNCH_NODE_ID='node-123'\n"), "{env}");
    assert!(env.contains("SKYLAUNCH_MODEL_SERVER_URL='http://127.0.0.1:8000'\n"));
    assert!(
        !env.contains("SKYLAUNCH_BOOTSTRAP") && !env.contains("SKYLAUNCH_AGENT_"),
        "the bootstrap's own settings stay out: {env}"
    );

    let unit = std::fs::read_to_string(
        root.path()
            .join("etc/systemd/system/skylaunch-agent.service"),
    )
    .unwrap();
    for line in [
        "EnvironmentFile=/etc/skylaunch/agent.env",
        "ExecStart=/usr/local/bin/skylaunch-agent",
        "Restart=on-failure",
        "RestartPreventExitStatus=3 4",
        "After=network-online.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line:?} in\n{unit}");
    }

    let installed = root.path().join("usr/local/bin/skylaunch-agent");
    let help = Command::new(&installed).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("SKYLAUNCH_NODE_TOKEN"));
}

#[test]
fn missing_token_fails_clearly_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let out = bootstrap(root.path(), &["SKYLAUNCH_NODE_TOKEN"], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SKYLAUNCH_NODE_TOKEN is not set"),
        "{stderr}"
    );
    assert_eq!(written(root.path()), 0, "nothing was written");
}

#[test]
fn a_value_the_env_file_cannot_hold_is_refused_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let out = bootstrap(
        root.path(),
        &[],
        &[("SKYLAUNCH_MODEL_NAME", "it's-a-model")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SKYLAUNCH_MODEL_NAME"), "{stderr}");
    assert!(!stderr.contains("it's-a-model"), "values are not echoed");
    assert_eq!(written(root.path()), 0, "nothing was written");
}
