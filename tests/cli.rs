//! The `skylaunch launch / jobs / nodes` commands against a running control plane, and the task
//! preview endpoint.

mod common;

use std::time::Duration;

use common::{Backend, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::json;

async fn app() -> Option<TestApp> {
    let db = common::TestDb::new(Backend::Sqlite).await?;
    let mut config = common::test_config(&db);
    let skylaunch = std::path::PathBuf::from(env!("CARGO_BIN_EXE_skylaunch"));
    config.agent_bin = Some(skylaunch.with_file_name("skylaunch-agent"));
    config.skylaunch_bin = Some(skylaunch);
    config.job_lease = Duration::from_secs(2);
    Some(TestApp::start(db, config).await)
}

async fn cli(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_skylaunch"))
        .args(args)
        .env("SKYLAUNCH_URL", &app.base)
        .env("SKYLAUNCH_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_follow_shows_stages_and_exits_zero_when_ready() {
    let Some(app) = app().await else { return };
    let (code, out, err) = cli(&app, &["launch", "--model", "demo/echo", "--follow"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("✓ validate") && out.contains("✓ register"),
        "{out}"
    );
    assert!(out.contains("is ready"), "{out}");
    let (code, out, _) = cli(&app, &["nodes"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("ready") && out.contains("echo-"),
        "named after the model: {out}"
    );
    let (code, out, _) = cli(&app, &["jobs"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("succeeded"), "{out}");
    let nodes = app.get("/admin/nodes", Some(ADMIN_TOKEN)).await.body;
    for n in nodes["nodes"].as_array().unwrap() {
        app.delete(
            &format!("/admin/nodes/{}", n["id"].as_str().unwrap()),
            Some(ADMIN_TOKEN),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_with_a_typo_prints_suggestions_and_exits_non_zero() {
    let Some(app) = app().await else { return };
    let (code, _, err) = cli(
        &app,
        &[
            "launch",
            "--provider",
            "skypilot",
            "--model",
            "m/x",
            "--gpu",
            "H10",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown GPU") && err.contains("did you mean: H100"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_launch_prints_the_plain_words_error() {
    let Some(app) = app().await else { return };
    let mut config = app.config.clone();
    config.public_url = Some("http://127.0.0.1:9".into());
    config.registration_timeout = Duration::from_secs(1);
    let app = {
        let mut app = app;
        app.running.take().unwrap().shutdown().await;
        TestApp::start(app.db, config).await
    };
    let (code, _, err) = cli(&app, &["launch", "--model", "demo/echo", "--follow"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("The node agent never registered"), "{err}");
    assert!(err.contains("→ "), "suggestions are shown: {err}");
    assert!(err.contains("registration_timeout"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_renders_the_task_without_launching() {
    let Some(app) = app().await else { return };
    let r = app
        .post("/admin/task-yaml/preview", Some(ADMIN_TOKEN), &json!({"model": "org/m", "provider": "skypilot", "gpu": "l4", "use_spot": true, "spot_fallback": "on_demand", "regions": ["us-east-1"]}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let yaml = r.body["task_yaml"].as_str().unwrap();
    assert!(yaml.contains("accelerators: L4:1"), "{yaml}");
    assert!(yaml.contains("SKYLAUNCH_NODE_TOKEN: <secret>"), "{yaml}");
    assert!(yaml.contains("infra: aws/us-east-1"), "{yaml}");
    assert_eq!(
        app.get("/admin/launch-jobs", Some(ADMIN_TOKEN)).await.body["jobs"],
        json!([]),
        "nothing launched"
    );
    let r = app
        .post(
            "/admin/task-yaml/preview",
            Some(ADMIN_TOKEN),
            &json!({"model": "org/m", "provider": "skypilot", "gpu": "Z9"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// Runs `skylaunch serve` with only `env` (and a fresh data dir) and expects it to refuse to
/// start; returns what it printed on stderr and the data dir.
async fn serve_refusal(env: &[(&str, &str)]) -> (String, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_skylaunch"))
            .arg("serve")
            .env_clear()
            .env("SKYLAUNCH_DATA_DIR", data.path())
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("serve exits at once")
    .unwrap();
    assert!(!out.status.success());
    (String::from_utf8_lossy(&out.stderr).to_string(), data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_non_loopback_address_without_token_and_keys() {
    // Refused before anything is bound: nothing listens beyond loopback in this test.
    let (err, data) = serve_refusal(&[
        ("SKYLAUNCH_LISTEN", "0.0.0.0:0"),
        ("SKYLAUNCH_API_KEYS", "key-one"),
    ])
    .await;
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0") && err.contains("SKYLAUNCH_ADMIN_TOKEN"),
        "{err}"
    );
    assert!(
        !err.contains("SKYLAUNCH_API_KEYS ("),
        "keys were given: {err}"
    );
    assert!(
        !data.path().join("skylaunch.db").exists(),
        "nothing was created before the refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_connect_timeout_not_below_the_idle_timeout() {
    let (err, _) = serve_refusal(&[
        ("SKYLAUNCH_LISTEN", "127.0.0.1:0"),
        ("SKYLAUNCH_PROXY_CONNECT_TIMEOUT", "10s"),
        ("SKYLAUNCH_PROXY_IDLE_TIMEOUT", "5s"),
    ])
    .await;
    assert!(
        err.contains(
            "--proxy-connect-timeout (10s) must be shorter than --proxy-idle-timeout (5s)"
        ),
        "{err}"
    );
}
