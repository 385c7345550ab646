//! A bounded fuzz run of the whole HTTP API: schemathesis (from PyPI) generates requests from
//! the server's own `/openapi.json` and sends them to a real `skylaunch serve`, on SQLite and on
//! PostgreSQL. No answer may be a 5xx (except the load balancer's documented 503 when no node
//! serves a model; see tests/fuzz/checks.py) and the server must still be up afterwards, with no
//! panic in its output. Providers point at nothing (no `sky`, no agent, no `ssh` client, EC2 and
//! Azure at a closed port on 127.0.0.1), so accepted launches fail at once, SSH hosts are never
//! contacted, and nothing leaves the machine.

mod common;
mod standins;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{Backend, TestDb, ADMIN_TOKEN};

/// The schemathesis executable scripts/test installs (SKYLAUNCH_TEST_SCHEMATHESIS); `None`
/// outside CI when it is missing (after a loud message). Under CI=true it must be there.
fn schemathesis() -> Option<PathBuf> {
    let path = std::env::var_os("SKYLAUNCH_TEST_SCHEMATHESIS").map(PathBuf::from);
    if let Some(p) = path.filter(|p| p.is_file()) {
        return Some(p);
    }
    let why =
        "SKYLAUNCH_TEST_SCHEMATHESIS does not point at schemathesis (scripts/test installs it)";
    if common::in_ci() {
        panic!("schemathesis is required under CI=true: {why}");
    }
    eprintln!("\n!!! SKIPPED: API fuzz run: {why}\n");
    None
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

async fn fuzz_run_finds_no_server_error(backend: Backend) {
    let Some(st) = schemathesis() else { return };
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let port = standins::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = db.data_dir.path().join("serve.log");
    let out = std::fs::File::create(&log).unwrap();
    let nowhere = "http://127.0.0.1:9";
    let mut server = tokio::process::Command::new(standins::binaries().0)
        .arg("serve")
        .env("SKYLAUNCH_LISTEN", format!("127.0.0.1:{port}"))
        .env("SKYLAUNCH_DATA_DIR", db.data_dir.path())
        .env("SKYLAUNCH_DATABASE_URL", &db.url)
        .env("SKYLAUNCH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SKYLAUNCH_SKY_BIN", "/nonexistent/sky")
        .env("SKYLAUNCH_AGENT_BIN", "/nonexistent/skylaunch-agent")
        .env("SKYLAUNCH_BIN", "/nonexistent/skylaunch")
        // SSH hosts the fuzzer adds name random addresses: no ssh client, so none is contacted.
        .env("SKYLAUNCH_SSH_BIN", "/nonexistent/ssh")
        .env("SKYLAUNCH_AWS_ENDPOINT_URL", nowhere)
        .env("SKYLAUNCH_AZURE_ENDPOINT_URL", nowhere)
        .env("SKYLAUNCH_AZURE_AUTHORITY_HOST", nowhere)
        .env("AWS_ACCESS_KEY_ID", "fuzz")
        .env("AWS_SECRET_ACCESS_KEY", "fuzz")
        .env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let healthy = || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    for _ in 0..200 {
        if healthy().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let work = tempfile::tempdir().unwrap();
    let run = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(&st)
            .args(["run", &format!("{base}/openapi.json")])
            .args(["--checks", "no_server_error"])
            // Bounded for the test command; SKYLAUNCH_TEST_FUZZ_EXAMPLES and _SEED run it longer
            // or differently.
            .args([
                "--max-examples",
                &env_or("SKYLAUNCH_TEST_FUZZ_EXAMPLES", "30"),
            ])
            .args(["--seed", &env_or("SKYLAUNCH_TEST_FUZZ_SEED", "7")])
            .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .args(["--request-timeout", "10"])
            // Event streams never end by design; their handlers are tested on their own.
            .args(["--exclude-path-regex", "/events$"])
            .env("SCHEMATHESIS_HOOKS", "checks")
            .env("PYTHONPATH", &checks)
            .env("NO_COLOR", "1")
            .current_dir(work.path())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the fuzz run ends within 5 minutes")
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let alive = healthy().await;
    server.start_kill().unwrap();
    let _ = server.wait().await;
    let server_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        run.status.success(),
        "schemathesis found failures:\n{report}\n--- server output ---\n{server_log}"
    );
    assert!(report.contains("passed"), "{report}");
    assert!(
        alive,
        "the server is down after the fuzz run:\n{server_log}"
    );
    assert!(!server_log.contains("panicked"), "{server_log}");
}

on_both_backends!(fuzz_run_finds_no_server_error);
