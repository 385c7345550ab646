//! The web UI end to end in headless Chromium (Debian's `chromium`), driven by playwright-core
//! scripts in tests/browser/ against the real control plane: a local launch reaching `ready`
//! and a chat through `/v1`, a failing SkyPilot launch (the stand-in `sky` replaying a recorded
//! failure), the fleet table following a node that turns unhealthy, and the deployments view
//! creating, scaling, rolling out, approving and deleting local deployments. Screenshots are
//! saved under `test-artifacts/ui/` (or SKYLAUNCH_UI_ARTIFACTS).
//!
//! Needs node, playwright-core (SKYLAUNCH_TEST_NODE_MODULES, set by scripts/test) and Chromium
//! (SKYLAUNCH_TEST_CHROMIUM, default /usr/bin/chromium). Under CI=true a missing one fails the
//! test; elsewhere the test is skipped with a loud message.

mod common;
mod standins;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Backend, TestApp, ADMIN_TOKEN};
use serde_json::{json, Value};

struct Browser {
    node_modules: PathBuf,
    chromium: PathBuf,
}

fn browser() -> Option<Browser> {
    let node_modules = std::env::var_os("SKYLAUNCH_TEST_NODE_MODULES").map(PathBuf::from);
    let chromium = std::env::var_os("SKYLAUNCH_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let problem = if !node_ok {
        Some("node is not installed".to_string())
    } else if !node_modules
        .as_ref()
        .is_some_and(|m| m.join("playwright-core").is_dir())
    {
        Some(
            "SKYLAUNCH_TEST_NODE_MODULES does not hold playwright-core (scripts/test installs it)"
                .to_string(),
        )
    } else if !chromium.is_file() {
        Some(format!(
            "{} is missing (Debian: apt-get install chromium)",
            chromium.display()
        ))
    } else {
        None
    };
    match problem {
        None => Some(Browser {
            node_modules: node_modules.expect("checked above"),
            chromium,
        }),
        Some(why) if common::in_ci() => panic!("browser tests are required under CI=true: {why}"),
        Some(why) => {
            eprintln!("\n!!! SKIPPED: browser test: {why}\n");
            None
        }
    }
}

fn artifacts() -> PathBuf {
    std::env::var_os("SKYLAUNCH_UI_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts/ui"))
}

/// One browser at a time: three Chromiums at once on a small CI machine starve the pages they
/// are testing.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs one scenario script against `app`; fails the test with the script's output if it fails.
async fn run_scenario(browser: &Browser, app: &TestApp, scenario: &str, env: &[(&str, String)]) {
    let _turn = ONE_BROWSER.lock().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser")
        .join(format!("{scenario}.cjs"));
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .env("NODE_PATH", &browser.node_modules)
        .env("SKYLAUNCH_UI_CHROMIUM", &browser.chromium)
        .env("SKYLAUNCH_UI_URL", app.url(""))
        .env("SKYLAUNCH_UI_TOKEN", ADMIN_TOKEN)
        .env("SKYLAUNCH_UI_ARTIFACTS", artifacts())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .unwrap_or_else(|_| panic!("browser scenario {scenario} did not finish within 240 s"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "browser scenario {scenario} failed:\n{stdout}\n{stderr}"
    );
}

/// A control plane on a fresh SQLite database, its test settings adjusted by `tweak`.
async fn app_with(tweak: impl FnOnce(&mut skylaunch::config::ServeConfig)) -> Option<TestApp> {
    let db = common::TestDb::new(Backend::Sqlite).await?;
    let mut config = common::test_config(&db);
    tweak(&mut config);
    Some(TestApp::start(db, config).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_launch_reaches_ready_and_the_chat_box_streams_an_answer() {
    let Some(browser) = browser() else { return };
    let (skylaunch, agent) = standins::binaries();
    let Some(app) = app_with(|config| {
        config.skylaunch_bin = Some(skylaunch);
        config.agent_bin = Some(agent);
    })
    .await
    else {
        return;
    };
    run_scenario(&browser, &app, "launch_local", &[]).await;
    // What the page showed is what the API holds.
    let jobs = app.get("/admin/launch-jobs", Some(ADMIN_TOKEN)).await.body;
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "exactly one launch: the 422 queued nothing");
    assert_eq!(jobs[0]["status"], "succeeded");
    // Leave nothing running: terminating the node stops the local processes.
    let node = jobs[0]["node_id"].as_str().unwrap();
    assert!(app.delete_node(node).await.status.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_launch_shows_the_friendly_error_and_its_suggestions() {
    let Some(browser) = browser() else { return };
    let Some(python) = common::sky_python() else {
        return;
    };
    let sky = standins::fake_sky(
        &python,
        "14-sim-sky-launch-y-L4-spot.txt",
        // Slow enough that the page can show each placement while it is tried.
        &[("FAKE_SKY_DELAY_S", "0.3")],
    );
    let Some(app) = app_with(|config| config.sky_bin = sky.bin.display().to_string()).await else {
        return;
    };
    run_scenario(&browser, &app, "failing_launch", &[]).await;
    let jobs = app.get("/admin/launch-jobs", Some(ADMIN_TOKEN)).await.body;
    assert_eq!(jobs["jobs"][0]["error"]["code"], "credentials_invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_table_follows_a_node_turning_unhealthy_without_reload() {
    let Some(browser) = browser() else { return };
    // Only the scenario's own heartbeats change these nodes: no silence-driven change mid-test.
    let Some(app) = app_with(|config| {
        config.heartbeat_interval = Duration::from_secs(60);
        config.offline_after = Duration::from_secs(600);
    })
    .await
    else {
        return;
    };
    let mut nodes = Vec::new();
    for name in ["gpu-node-a", "gpu-node-b"] {
        let (id, token) = app.ready_node(name).await;
        nodes.push(serde_json::json!({"id": id, "token": token, "name": name}));
    }
    run_scenario(
        &browser,
        &app,
        "fleet_live",
        &[(
            "SKYLAUNCH_UI_NODES",
            serde_json::Value::Array(nodes.clone()).to_string(),
        )],
    )
    .await;
    let a = app.node(nodes[0]["id"].as_str().unwrap()).await;
    assert_eq!(a["status"], "unhealthy");
    let b = app.node(nodes[1]["id"].as_str().unwrap()).await;
    assert_eq!(b["status"], "terminated");
}

/// Polls the API (up to about 60 s) until `done` holds for the deployment's reply (its status
/// code and body).
async fn wait_for_deployment(
    app: &TestApp,
    name: &str,
    what: &str,
    done: impl Fn(u16, &Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        let r = app
            .get(&format!("/admin/deployments/{name}"), Some(ADMIN_TOKEN))
            .await;
        if done(r.status.as_u16(), &r.body) {
            return r.body;
        }
        last = r.body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("deployment {name} never got {what}; last seen: {last:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_view_creates_scales_approves_and_deletes_without_reload() {
    let Some(browser) = browser() else { return };
    let (skylaunch, agent) = standins::binaries();
    // The settings of tests/deployments.rs: the reconciler and its launches act within the test.
    let Some(app) = app_with(|config| {
        config.skylaunch_bin = Some(skylaunch);
        config.agent_bin = Some(agent);
        config.job_lease = Duration::from_secs(3);
        config.reconcile_interval = Duration::from_millis(200);
        config.replica_drain_timeout = Duration::from_secs(10);
        config.deployment_backoff = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    // A deployment whose replica launch waits for an admin: the page approves it.
    let gated = json!({
        "name": "gated", "model": "echo/gated", "provider": "local", "replicas": 1,
        "approval": {"guarded": ["launch_replica"]}
    });
    let r = app
        .post("/admin/deployments", Some(ADMIN_TOKEN), &gated)
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    run_scenario(
        &browser,
        &app,
        "deployments",
        &[("SKYLAUNCH_UI_GATED", "gated".to_string())],
    )
    .await;

    // What the page showed is what the API holds: the form's deployment deleted, the guarded
    // launch approved by an admin and done.
    wait_for_deployment(&app, "chat-one", "deleted", |status, _| status == 404).await;
    let d = wait_for_deployment(&app, "gated", "1 ready replica", |status, d| {
        status == 200 && d["status"] == "serving" && d["replicas"]["ready"] == 1
    })
    .await;
    assert_eq!(d["revision"], 1);
    let actions = app
        .get("/admin/deployments/gated/actions", Some(ADMIN_TOKEN))
        .await
        .body;
    let launches: Vec<&Value> = actions["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "launch_replica")
        .collect();
    assert_eq!(launches.len(), 1, "{actions:#}");
    assert_eq!(launches[0]["risk"], "guarded");
    assert_eq!(launches[0]["state"], "completed", "{actions:#}");

    // Leave nothing running: deleting the deployment terminates its replica's local processes.
    let r = app
        .delete("/admin/deployments/gated", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.body);
    wait_for_deployment(&app, "gated", "deleted", |status, _| status == 404).await;
    let nodes = app.get("/admin/nodes", Some(ADMIN_TOKEN)).await.body;
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["status"], "terminated", "{n:#}");
    }
}
