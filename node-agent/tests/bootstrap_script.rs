//! `scripts/bootstrap-agent.sh` installs the agent as a systemd service: run against a temporary
//! root with systemctl skipped.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bootstrap-agent.sh")
}

fn bootstrap(root: &Path, token: Option<&str>) -> std::process::Output {
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
        .env("SKYLAUNCH_CONTROL_PLANE_URL", "http://127.0.0.1:8080")
        .env("SKYLAUNCH_NODE_ID", "node-123")
        .env("SKYLAUNCH_MODEL_SERVER_URL", "http://127.0.0.1:8000");
    if let Some(token) = token {
        cmd.env("SKYLAUNCH_NODE_TOKEN", token);
    }
    cmd.output().expect("bash runs")
}

#[test]
fn installs_binary_private_env_file_and_unit() {
    let root = tempfile::tempdir().unwrap();
    let out = bootstrap(root.path(), Some("secret-node-token-abc"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("secret-node-token-abc"),
        "the token is never printed"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret-node-token-abc"));

    let env_file = root.path().join("etc/skylaunch/agent.env");
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.contains("SKYLAUNCH_NODE_TOKEN=secret-node-token-abc"),
        "{env}"
    );
    assert!(env.contains("SKYLAUNCH_NODE_ID=node-123"));
    assert!(env.contains("SKYLAUNCH_MODEL_SERVER_URL=http://127.0.0.1:8000"));
    assert!(
        !env.contains("SKYLAUNCH_BOOTSTRAP"),
        "bootstrap settings stay out: {env}"
    );

    let unit = std::fs::read_to_string(
        root.path()
            .join("etc/systemd/system/skylaunch-agent.service"),
    )
    .unwrap();
    assert!(unit.contains("EnvironmentFile=/etc/skylaunch/agent.env"));
    assert!(unit.contains("RestartPreventExitStatus=3 4"));
    assert!(unit.contains("ExecStart=/usr/local/bin/skylaunch-agent"));

    let installed = root.path().join("usr/local/bin/skylaunch-agent");
    let help = Command::new(&installed).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("SKYLAUNCH_NODE_TOKEN"));
}

#[test]
fn missing_token_fails_clearly_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let out = bootstrap(root.path(), None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SKYLAUNCH_NODE_TOKEN is not set"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        0,
        "nothing was written"
    );
}
