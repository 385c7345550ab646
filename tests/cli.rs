//! The `skylaunch launch / jobs / nodes / deploy / deployments / actions` commands against a
//! running control plane, and the task preview endpoint.

mod common;

use std::time::Duration;

use common::{Backend, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn app() -> Option<TestApp> {
    let db = common::TestDb::new(Backend::Sqlite).await?;
    let mut config = common::test_config(&db);
    let skylaunch = std::path::PathBuf::from(env!("CARGO_BIN_EXE_skylaunch"));
    config.agent_bin = Some(skylaunch.with_file_name("skylaunch-agent"));
    config.skylaunch_bin = Some(skylaunch);
    config.job_lease = Duration::from_secs(2);
    config.reconcile_interval = Duration::from_millis(200);
    config.replica_drain_timeout = Duration::from_secs(10);
    Some(TestApp::start(db, config).await)
}

async fn deployment(app: &TestApp, name: &str) -> common::Reply {
    app.get(&format!("/admin/deployments/{name}"), Some(ADMIN_TOKEN))
        .await
}

/// Runs `skylaunch actions <args>` until its output has `want` (up to about 30 s); returns it.
async fn actions_until(app: &TestApp, args: &[&str], want: &str) -> String {
    let mut argv = vec!["actions"];
    argv.extend_from_slice(args);
    let mut out = String::new();
    for _ in 0..150 {
        let (code, o, err) = cli(app, &argv).await;
        assert_eq!(code, 0, "{err}");
        out = o;
        if out.contains(want) {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "`skylaunch {}` never showed {want:?}; last:\n{out}",
        argv.join(" ")
    );
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
async fn serve_refuses_a_non_loopback_address_while_v1_has_no_key() {
    // No key in the environment and none made in its (new) database: refused before it binds.
    let (err, _) = serve_refusal(&[
        ("SKYLAUNCH_LISTEN", "0.0.0.0:0"),
        ("SKYLAUNCH_ADMIN_TOKEN", "a-long-admin-token-value-0123"),
    ])
    .await;
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0")
            && err.contains("SKYLAUNCH_API_KEYS")
            && err.contains("POST /admin/api-keys"),
        "{err}"
    );
    assert!(!err.contains("SKYLAUNCH_ADMIN_TOKEN ("), "{err}");
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

/// A deployment whose replicas wait for approval: nothing is launched however many it wants.
const GUARDED: &[&str] = &[
    "deploy",
    "--name",
    "chat",
    "--model",
    "echo/chat",
    "--provider",
    "local",
    "--guard",
    "launch_replica",
];

async fn deploy(app: &TestApp, extra: &[&str]) -> (i32, String, String) {
    let mut args = GUARDED.to_vec();
    args.extend_from_slice(extra);
    cli(app, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_creates_then_a_changed_env_is_a_new_revision_and_replicas_alone_are_not() {
    let Some(app) = app().await else { return };
    let (code, out, err) = deploy(&app, &["--replicas", "0", "--env", "MODE=a"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("created deployment chat (revision 1)"),
        "{out}"
    );
    assert!(out.contains("deployment chat: revision 1"), "{out}");
    assert_eq!(deployment(&app, "chat").await.body["revision"], 1);

    let (code, out, err) = deploy(&app, &["--replicas", "0", "--env", "MODE=b"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("updated deployment chat: new revision 2"),
        "{out}"
    );
    assert_eq!(deployment(&app, "chat").await.body["revision"], 2);

    let (code, out, err) = deploy(&app, &["--replicas", "2", "--env", "MODE=b"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("updated deployment chat: still revision 2"),
        "{out}"
    );
    let d = deployment(&app, "chat").await.body;
    assert_eq!(d["revision"], 2);
    assert_eq!(d["replicas"]["desired"], 2);

    let (code, out, _) = cli(&app, &["deployments"]).await;
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.starts_with("chat "))
        .unwrap_or_else(|| panic!("a row for chat: {out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[2..4],
        ["0/2", "2"],
        "ready/desired and revision: {out}"
    );
    let (code, out, _) = cli(&app, &["deployments", "--json"]).await;
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).expect("--json prints the API's JSON");
    assert_eq!(listed["deployments"][0]["name"], "chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_from_a_yaml_file_takes_its_fields_and_flags_override_them() {
    let Some(app) = app().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.yaml");
    std::fs::write(
        &file,
        "name: chat\nmodel: echo/chat\nprovider: local\nreplicas: 3\nenvs:\n  MAX_MODEL_LEN: 8192\nupdate:\n  max_surge: 2\napproval:\n  guarded: [launch_replica]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = cli(
        &app,
        &[
            "deploy",
            "-f",
            file,
            "--replicas",
            "0",
            "--env",
            "HF_TOKEN=t",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("created deployment chat"), "{out}");
    let spec = deployment(&app, "chat").await.body["spec"].clone();
    assert_eq!(spec["replicas"], 0, "the flag wins: {spec:#}");
    assert_eq!(spec["update"]["max_surge"], 2);
    assert_eq!(spec["approval"]["guarded"], json!(["launch_replica"]));
    let envs: Vec<&String> = spec["envs"].as_object().unwrap().keys().collect();
    assert_eq!(
        envs,
        ["HF_TOKEN", "MAX_MODEL_LEN"],
        "the flag adds to the file's"
    );

    std::fs::write(dir.path().join("typo.yaml"), "name: chat\nreplica: 1\n").unwrap();
    let typo = dir.path().join("typo.yaml");
    let (code, _, err) = cli(&app, &["deploy", "-f", typo.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("typo.yaml") && err.contains("unknown field `replica`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_with_an_unknown_gpu_prints_the_suggestion_and_exits_non_zero() {
    let Some(app) = app().await else { return };
    let (code, _, err) = cli(
        &app,
        &[
            "deploy",
            "--name",
            "chat",
            "--model",
            "m/x",
            "--provider",
            "skypilot",
            "--gpu",
            "A1000",
            "--replicas",
            "1",
        ],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did you mean: A100"), "{err}");
    assert_eq!(
        deployment(&app, "chat").await.status,
        StatusCode::NOT_FOUND,
        "nothing was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_lists_the_pending_ones_and_approve_or_reject_decides_them() {
    let Some(app) = app().await else { return };
    let (code, out, _) = cli(&app, &["actions"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "no pending actions: nothing waits for approval");
    let (code, out, _) = cli(&app, &["actions", "--state", "all", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["actions"],
        json!([])
    );

    let (code, out, err) = deploy(&app, &["--replicas", "1"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let out = actions_until(&app, &[], "launch_replica").await;
    let row = out.lines().find(|l| l.contains("launch_replica")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[1..6],
        [
            "chat",
            "launch_replica",
            "missing_replica",
            "guarded",
            "pending"
        ],
        "{out}"
    );
    let (code, out, err) = cli(&app, &["actions", "reject", cells[0]]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rejected"), "{out}");
    actions_until(&app, &["--state", "rejected"], cells[0]).await;

    let (code, _, err) = cli(&app, &["actions", "approve", "act-nosuchaction"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("no action with id \"act-nosuchaction\""),
        "{err}"
    );
    let (code, _, err) = cli(&app, &["actions", "approve", cells[0]]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not pending"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_follows_until_serving_and_show_prints_the_replicas() {
    let Some(app) = app().await else { return };
    let (code, out, err) = cli(
        &app,
        &[
            "deploy",
            "--name",
            "web",
            "--model",
            "echo/web",
            "--provider",
            "local",
            "--replicas",
            "1",
            "--wait",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("converging: 0/1 ready"),
        "progress is shown: {out}"
    );
    assert!(
        out.contains("✓ deployment web: revision 1, serving, 1/1 replicas ready"),
        "{out}"
    );

    let (code, out, _) = cli(&app, &["deployments", "show", "web"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("deployment web: revision 1, serving"), "{out}");
    let header = out.lines().position(|l| l.starts_with("SLOT")).unwrap();
    let cells: Vec<&str> = out
        .lines()
        .nth(header + 1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(cells[0], "0", "{out}");
    assert!(cells[1].starts_with("web-r1-0-"), "{out}");
    assert_eq!(cells[2..5], ["ready", "1", "on_demand"], "{out}");

    let (code, _, err) = cli(&app, &["deployments", "show", "nope"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no deployment named \"nope\""), "{err}");

    // Deleted: its replica's processes are stopped before the test ends.
    let (code, out, _) = cli(&app, &["deployments", "delete", "web"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("deleting"), "{out}");
    for _ in 0..300 {
        if deployment(&app, "web").await.status == StatusCode::NOT_FOUND {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the deployment was never gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_stops_with_the_reason_when_the_rollout_fails() {
    let Some(app) = app().await else { return };
    let mut config = app.config.clone();
    config.public_url = Some("http://127.0.0.1:9".into());
    config.registration_timeout = Duration::from_secs(1);
    config.deployment_backoff = Duration::from_secs(1);
    let app = {
        let mut app = app;
        app.running.take().unwrap().shutdown().await;
        TestApp::start(app.db, config).await
    };
    let (code, out, err) = cli(
        &app,
        &[
            "deploy",
            "--name",
            "web",
            "--model",
            "echo/web",
            "--replicas",
            "1",
            "--wait",
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("✗ deployment web stopped its rollout (rollout_failed)")
            && err.contains("The node agent never registered"),
        "the reason is printed: {err}"
    );
    assert!(
        err.contains("skylaunch deployments retry web"),
        "what to do next: {err}"
    );
}
