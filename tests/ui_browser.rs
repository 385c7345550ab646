//! The web UI end to end in headless Chromium (Debian's `chromium`), driven by playwright-core
//! scripts in tests/browser/ against the real control plane: a local launch reaching `ready`
//! and a chat through `/v1`, a failing SkyPilot launch (the stand-in `sky` replaying a recorded
//! failure), the fleet table following a node that turns unhealthy, and the deployments view
//! creating, scaling, rolling out, approving and deleting local deployments, an autoscaled
//! deployment's metric and decisions under load from the test, a deployment scaled to zero and
//! its cold start while requests wait, the hosts view
//! adding SSH hosts (a real sshd), probing them again and removing one, the API keys view
//! making a key (shown once) and revoking it, and the usage view charting the tokens and
//! dollars of requests sent to a local replica beside a priced node. Screenshots are
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

/// A control plane whose local provider runs the built binaries and whose SkyPilot is `sky`.
async fn local_app_with_sky(sky: &standins::FakeSky) -> Option<TestApp> {
    let (skylaunch, agent) = standins::binaries();
    app_with(|config| {
        config.skylaunch_bin = Some(skylaunch);
        config.agent_bin = Some(agent);
        config.sky_bin = sky.bin.display().to_string();
    })
    .await
}

/// Deletes a deployment and waits until it is gone: its replicas' local processes are stopped,
/// every node terminated.
async fn delete_leaving_nothing_running(app: &TestApp, name: &str) {
    let r = app
        .delete(&format!("/admin/deployments/{name}"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.body);
    wait_for_deployment(app, name, "deleted", |status, _| status == 404).await;
    let nodes = app.get("/admin/nodes", Some(ADMIN_TOKEN)).await.body;
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["status"], "terminated", "{n:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_launch_reaches_ready_and_the_chat_box_streams_an_answer() {
    let Some(browser) = browser() else { return };
    let Some(python) = common::sky_python() else {
        return;
    };
    // Never launched through: `sky check` enables AWS, so the dialog offers SkyPilot for the
    // validation step.
    let sky = standins::fake_sky(
        &python,
        "14-sim-sky-launch-y-L4-spot.txt",
        &[("FAKE_SKY_ENABLED_CLOUDS", "aws")],
    );
    let Some(app) = local_app_with_sky(&sky).await else {
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
        // Slow enough that the page can show each placement while it is tried; `sky check`
        // enables AWS, so the dialog offers SkyPilot (the launch itself then fails).
        &[
            ("FAKE_SKY_DELAY_S", "0.3"),
            ("FAKE_SKY_ENABLED_CLOUDS", "aws"),
        ],
    );
    let Some(app) = app_with(|config| config.sky_bin = sky.bin.display().to_string()).await else {
        return;
    };
    run_scenario(&browser, &app, "failing_launch", &[]).await;
    let jobs = app.get("/admin/launch-jobs", Some(ADMIN_TOKEN)).await.body;
    assert_eq!(jobs["jobs"][0]["error"]["code"], "credentials_invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_dialog_shows_which_providers_can_launch_and_how_to_fix_the_others() {
    let Some(browser) = browser() else { return };
    let Some(python) = common::sky_python() else {
        return;
    };
    // `sky check` enables no cloud until the scenario writes `enabled-clouds` into the stand-in's
    // state (as an operator runs `aws configure`), then clicks "Check again".
    let sky = standins::fake_sky(&python, "14-sim-sky-launch-y-L4-spot.txt", &[]);
    let Some(app) = local_app_with_sky(&sky).await else {
        return;
    };
    let state = sky.state.path().display().to_string();
    run_scenario(
        &browser,
        &app,
        "provider_readiness",
        &[("SKYLAUNCH_UI_SKY_STATE", state)],
    )
    .await;
    let checks = sky.calls().iter().filter(|c| c[0] == "check").count();
    assert_eq!(checks, 2, "one check on opening, one on Check again");
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
    // The settings of tests/deployments.rs: the reconciler and its launches act within the test.
    let Some(app) = standins::local_app(Backend::Sqlite, |config| {
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

    delete_leaving_nothing_running(&app, "gated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_view_adds_probes_and_removes_hosts() {
    let Some(browser) = browser() else { return };
    let Some(sshd) = common::Sshd::start() else {
        return;
    };
    let Some(app) = app_with(|_| {}).await else {
        return;
    };
    let fingerprint = skylaunch::ssh::fingerprint(&sshd.host_key)
        .await
        .expect("ssh-keygen fingerprints the host key");
    run_scenario(
        &browser,
        &app,
        "hosts",
        &[
            ("SKYLAUNCH_UI_SSH_PORT", sshd.port.to_string()),
            ("SKYLAUNCH_UI_SSH_USER", sshd.user.clone()),
            ("SKYLAUNCH_UI_SSH_PASSWORD", sshd.password.clone()),
            ("SKYLAUNCH_UI_SSH_KEY", sshd.client_key.clone()),
            ("SKYLAUNCH_UI_SSH_HOST_KEY", sshd.host_key.clone()),
            ("SKYLAUNCH_UI_SSH_FINGERPRINT", fingerprint.clone()),
        ],
    )
    .await;

    // What the page showed is what the API holds: the host added by password, probed twice and
    // available; the one added by key at a dead port removed.
    let hosts = app.get("/admin/hosts", Some(ADMIN_TOKEN)).await.body;
    let list = hosts["hosts"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{hosts:#}");
    let id = list[0]["id"].as_str().unwrap();
    let good = app
        .get(&format!("/admin/hosts/{id}"), Some(ADMIN_TOKEN))
        .await
        .body;
    assert_eq!(good["name"], "gpu-good", "{good:#}");
    assert_eq!(good["status"], "available", "{good:#}");
    assert_eq!(good["auth"], "password");
    assert_eq!(good["port"], sshd.port);
    assert_eq!(good["host_key_fingerprint"], fingerprint.as_str());
    assert_eq!(good["labels"], json!({"rack": "a", "zone": "lab"}));
    let probed = good["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "probed")
        .count();
    assert_eq!(
        probed, 2,
        "added, then probed again from the page: {good:#}"
    );
    let bad = app.get("/admin/hosts/gpu-bad", Some(ADMIN_TOKEN)).await;
    assert_eq!(bad.status.as_u16(), 404, "{}", bad.body);
    // The page sent the credentials in request bodies only: none is shown back.
    assert!(!hosts.to_string().contains(&sshd.password));
    assert!(!good.to_string().contains(&sshd.password));
}

/// The `a → b` replica counts named by the autoscaler's reasons on actions, oldest first, each
/// once: the desired count's history.
fn scale_history(actions: &[Value]) -> Vec<(u64, u64)> {
    let mut scaling: Vec<&Value> = actions
        .iter()
        .filter(|a| a["drift"] == "scale_up" || a["drift"] == "scale_down")
        .collect();
    scaling.sort_by_key(|a| a["created_at"].as_str().unwrap_or_default().to_string());
    let mut history = Vec::new();
    for a in scaling {
        let reason = a["reason"].as_str().unwrap_or_default();
        let Some((before, after)) = reason.rsplit_once(" → ") else {
            continue;
        };
        let from = before.rsplit(' ').next().and_then(|n| n.parse().ok());
        let to = after.split(' ').next().and_then(|n| n.parse().ok());
        if let (Some(from), Some(to)) = (from, to) {
            if !history.contains(&(from, to)) {
                history.push((from, to));
            }
        }
    }
    history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_shows_the_metric_against_its_target_and_each_decision() {
    let Some(browser) = browser() else { return };
    // The settings of tests/autoscale.rs.
    let Some(app) = standins::local_app(Backend::Sqlite, |config| {
        config.replica_drain_timeout = Duration::from_secs(20);
        config.replica_unhealthy_grace = Duration::from_secs(5);
    })
    .await
    else {
        return;
    };
    // The scenario and this test tell each other where they are through files here.
    let signals = tempfile::tempdir().expect("temp dir");
    let env = [("SKYLAUNCH_UI_SIGNALS", signals.path().display().to_string())];
    let scenario = run_scenario(&browser, &app, "autoscale", &env);
    // The load, while the page is open: six clients from the moment the page has shown the
    // deployment it created with its one replica ready (its `one-ready` signal), until it has
    // three and the page has shown the scale-up.
    let load = async {
        // No deadline of its own: the page creates the deployment once the browser is its
        // (another browser test may hold it first), and a failing scenario ends the test.
        let one_ready = signals.path().join("one-ready");
        while !one_ready.exists() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let loads: Vec<_> = (0..6).map(|_| app.chat_load("echo/auto")).collect();
        let seen = signals.path().join("scaled-up");
        let mut last = Value::Null;
        for _ in 0..1200 {
            last = app.get_deployment("auto").await.body;
            if last["replicas"]["ready"] == 3 && last["replicas"]["desired"] == 3 && seen.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            seen.exists() && last["replicas"]["ready"] == 3,
            "the page never showed the scale-up to 3 ready replicas; last seen: {last:#}"
        );
        let mut answered = 0;
        for load in loads {
            let (ok, failed) = load.stop().await;
            assert_eq!(failed, 0, "no request failed while scaling up");
            answered += ok;
        }
        answered
    };
    let ((), answered) = tokio::join!(scenario, load);
    assert!(answered > 0);

    // What the page showed is what the API holds.
    let shown = |name: &str| -> Value {
        let text = std::fs::read_to_string(signals.path().join(name))
            .unwrap_or_else(|e| panic!("the scenario wrote {name}: {e}"));
        serde_json::from_str(&text).unwrap()
    };
    let (up, down) = (shown("scaled-up"), shown("scaled-down"));
    assert_eq!((up["from"].as_u64(), up["to"].as_u64()), (Some(1), Some(3)));
    assert_eq!(
        (down["from"].as_u64(), down["to"].as_u64()),
        (Some(3), Some(2))
    );
    // Back to one replica after the quiet, each retired one drained and then terminated.
    app.wait_deployment("auto", "back to 1 replica", |d| {
        d["replicas"]["desired"] == 1
            && d["replicas"]["ready"] == 1
            && d["nodes"].as_array().unwrap().len() == 1
    })
    .await;
    let actions = app
        .wait_actions("auto", "the scale-down done", |all| {
            ["drain_replica", "terminate_replica"].iter().all(|kind| {
                all.iter()
                    .filter(|a| {
                        a["drift"] == "scale_down"
                            && a["kind"] == *kind
                            && a["state"] == "completed"
                    })
                    .count()
                    == 2
            })
        })
        .await;
    // The desired count went 1 → 3 → 2 → 1, as the page's decisions said.
    assert_eq!(
        scale_history(&actions),
        vec![(1, 3), (3, 2), (2, 1)],
        "{actions:#?}"
    );
    let with_reason = |drift: &str, reason: &str| {
        actions
            .iter()
            .filter(|a| {
                a["drift"] == drift && a["reason"].as_str().unwrap_or_default().contains(reason)
            })
            .count()
    };
    let up_reason = up["reason"].as_str().unwrap();
    let down_reason = down["reason"].as_str().unwrap();
    assert_eq!(with_reason("scale_up", up_reason), 2, "{actions:#?}");
    assert!(with_reason("scale_down", down_reason) >= 1, "{actions:#?}");
    for a in actions.iter().filter(|a| a["drift"] == "scale_up") {
        assert_eq!(a["kind"], "launch_replica", "{a:#}");
        assert_eq!(a["state"], "completed", "{a:#}");
    }
    assert!(
        actions.iter().all(|a| a["drift"] != "excess_replica"),
        "{actions:#?}"
    );

    // Leave nothing running: deleting the deployment terminates its replicas' local processes.
    delete_leaving_nothing_running(&app, "auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_shows_the_cold_start_in_progress() {
    let Some(browser) = browser() else { return };
    let Some(app) = standins::local_app(Backend::Sqlite, |_| {}).await else {
        return;
    };
    // Each replica listens only 3 s after it starts, so that a cold start lasts long enough
    // for the page to see it.
    app.create_deployment(&json!({
        "name": "cold", "model": "echo/cold", "provider": "local", "replicas": 1,
        "envs": {"ECHO_STARTUP_DELAY_MS": "3000"},
        "autoscale": {"min_replicas": 0, "max_replicas": 1, "metric": "in_flight", "target": 4,
                      "scale_to_zero_after_s": 2, "cold_start_timeout_s": 120, "window_s": 2},
        "routing": {"policy": "session", "session_header": "X-Conversation"},
    }))
    .await;
    app.wait_deployment("cold", "zero replicas", |d| {
        d["replicas"]["desired"] == 0 && d["nodes"].as_array().unwrap().is_empty()
    })
    .await;

    let signals = tempfile::tempdir().expect("temp dir");
    let env = [("SKYLAUNCH_UI_SIGNALS", signals.path().display().to_string())];
    let scenario = run_scenario(&browser, &app, "cold_start", &env);
    let send = || {
        let (client, url) = (app.client.clone(), app.url("/v1/chat/completions"));
        async move {
            let r = client
                .post(url)
                .timeout(Duration::from_secs(120))
                .json(&json!({"model": "echo/cold", "messages": [{"role": "user", "content": "wake"}]}))
                .send()
                .await
                .expect("the request is answered");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or_default(),
            )
        }
    };
    // Two requests at once, once the page has shown the deployment at zero: they wait for its
    // cold start. No deadline of its own: the page may wait for the browser (another browser
    // test may hold it first), and a failing scenario ends the test.
    let requests = async {
        let seen = signals.path().join("at-zero");
        while !seen.exists() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::join!(send(), send())
    };
    let ((), (a, b)) = tokio::join!(scenario, requests);
    for (status, body) in [&a, &b] {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            body["choices"][0]["message"]["content"], "echo: wake",
            "{body}"
        );
    }

    // What the page showed: both requests waiting, for the cold start the autoscaler decided.
    let text = std::fs::read_to_string(signals.path().join("cold-start"))
        .expect("the scenario wrote cold-start");
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["waiting"], 2, "{shown:#}");
    let actions = app.deployment_actions("cold").await;
    assert!(
        actions.iter().any(|a| a["drift"] == "scale_up"
            && a["kind"] == "launch_replica"
            && a["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("requests wait at zero replicas")),
        "{actions:#?}"
    );

    delete_leaving_nothing_running(&app, "cold").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_view_shows_a_new_key_once_and_revokes_it() {
    let Some(browser) = browser() else { return };
    let Some(app) = app_with(|_| {}).await else {
        return;
    };
    run_scenario(&browser, &app, "api_keys", &[]).await;

    // What the page showed is what the API holds: team-a limited to echo/one at 60 requests a
    // minute and revoked; team-b for every model at 50,000 tokens a minute, expiring; neither
    // key itself in any answer.
    let keys = app.get("/admin/api-keys", Some(ADMIN_TOKEN)).await.body;
    let list = keys["api_keys"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{keys:#}");
    let named = |name: &str| {
        list.iter()
            .find(|k| k["name"] == name)
            .unwrap_or_else(|| panic!("{name} is listed: {keys:#}"))
    };
    let a = named("team-a");
    assert_eq!(a["status"], "revoked", "{a:#}");
    assert!(a["revoked_at"].is_string(), "{a:#}");
    assert_eq!(a["models"], json!(["echo/one"]));
    assert_eq!(a["requests_per_minute"], 60);
    assert_eq!(a["tokens_per_minute"], Value::Null);
    assert_eq!(a["expires_at"], Value::Null);
    let b = named("team-b");
    assert_eq!(b["status"], "active", "{b:#}");
    assert_eq!(b["models"], Value::Null);
    assert_eq!(b["requests_per_minute"], Value::Null);
    assert_eq!(b["tokens_per_minute"], 50_000);
    assert!(b["expires_at"].is_string(), "{b:#}");
    assert!(list.iter().all(|k| k.get("key").is_none()), "{keys:#}");
    // Keys were made: /v1 stays closed to a request without one.
    let models = app.get("/v1/models", None).await;
    assert_eq!(models.status.as_u16(), 401, "{}", models.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_view_charts_tokens_and_cost_and_groups_them() {
    let Some(browser) = browser() else { return };
    let Some(app) = standins::local_app(Backend::Sqlite, |_| {}).await else {
        return;
    };
    // A bring-your-own node for echo/one with an on-demand L4 (the catalogue's $0.80 an hour):
    // it costs from when it was made. It never heartbeats, so it takes no requests; its
    // endpoint is pinned to a documentation address (a byo node may not register loopback).
    let (priced, token) = app
        .create_node_from(&json!({"name": "priced", "model_name": "echo/one",
                                  "endpoint_url": "http://192.0.2.10:8000"}))
        .await;
    let mut registration = common::registration();
    registration["model_name"] = json!("echo/one");
    registration["gpu_type"] = json!("L4");
    registration["gpu_count"] = json!(1);
    registration["spot_instance"] = json!(false);
    let r = app
        .post(
            &format!("/admin/nodes/register?node_id={priced}"),
            Some(&token),
            &registration,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    // A local replica (free: this machine) that answers with the echo server's token counts.
    app.create_deployment(
        &json!({"name": "echo-one", "model": "echo/one", "provider": "local", "replicas": 1}),
    )
    .await;
    app.wait_deployment("echo-one", "its replica ready", |d| {
        d["replicas"]["ready"] == 1
    })
    .await;
    const SENT: u64 = 3;
    for i in 0..SENT {
        let r = app
            .post(
                "/v1/chat/completions",
                None,
                &json!({"model": "echo/one", "messages": [{"role": "user", "content": format!("count me {i}")}]}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "request {i}: {}", r.body);
    }
    // Usage is written every second: wait until the report counts every request.
    let mut usage = Value::Null;
    for _ in 0..150 {
        usage = app.get("/admin/usage", Some(ADMIN_TOKEN)).await.body;
        if usage["total"]["requests"] == SENT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(usage["total"]["requests"], SENT, "{usage:#}");

    run_scenario(
        &browser,
        &app,
        "usage",
        &[("SKYLAUNCH_UI_REQUESTS", SENT.to_string())],
    )
    .await;

    // What the page showed is what the API holds: the tokens of the series are the total's,
    // and its dollars too; echo/one costs what the priced node does.
    let usage = app.get("/admin/usage", Some(ADMIN_TOKEN)).await.body;
    let total = &usage["total"];
    let points = usage["series"]["points"].as_array().unwrap();
    let sum = |field: &str| -> f64 { points.iter().map(|p| p[field].as_f64().unwrap()).sum() };
    assert_eq!(
        sum("prompt_tokens") + sum("completion_tokens"),
        total["prompt_tokens"].as_f64().unwrap() + total["completion_tokens"].as_f64().unwrap(),
        "{usage:#}"
    );
    assert!(
        (sum("usd") - total["usd"].as_f64().unwrap()).abs() < 1e-4,
        "{usage:#}"
    );
    let echo = usage["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "echo/one")
        .unwrap_or_else(|| panic!("echo/one is a group: {usage:#}"));
    assert_eq!(echo["requests"], SENT, "{usage:#}");
    assert_eq!(echo["hourly_usd"], 0.8, "{usage:#}");
    assert!(echo["usd"].as_f64().unwrap() > 0.0, "{usage:#}");

    assert!(app.delete_node(&priced).await.status.is_success());
    delete_leaving_nothing_running(&app, "echo-one").await;
}
