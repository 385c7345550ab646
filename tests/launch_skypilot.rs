//! Launch jobs through the SkyPilot provider, end to end. No cloud VM can exist here, so `sky` is
//! a realistic stand-in (tests/fake-sky/fake_sky.py) that replays recorded SkyPilot 0.14.1
//! output with pacing and, on success, plays the VM: it starts the real agent with the task
//! file's envs and secrets. The control plane, runner, parser, error mapper and agent are real.

mod common;
mod standins;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Backend, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use standins::{fake_sky, FakeSky};

async fn app_with_sky(sky: &FakeSky) -> Option<TestApp> {
    let db = common::TestDb::new(Backend::Sqlite).await?;
    let mut config = common::test_config(&db);
    // The stand-in VMs run on this machine: their model servers are on loopback.
    config.allow_loopback_endpoints = true;
    config.sky_bin = sky.bin.display().to_string();
    config.registration_timeout = Duration::from_secs(20);
    Some(TestApp::start(db, config).await)
}

fn l4_spot() -> Value {
    json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "provider": "skypilot", "gpu": "L4",
        "use_spot": true, "spot_fallback": "on_demand", "regions": ["us-east-1", "us-west-2"]})
}

macro_rules! setup {
    ($transcript:expr $(, $k:expr => $v:expr)*) => {{
        let Some(python) = common::sky_python() else { return };
        let sky = fake_sky(&python, $transcript, &[$(($k, $v)),*]);
        let Some(app) = app_with_sky(&sky).await else { return };
        (sky, app)
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_sky_launch_shows_stages_and_attempt_and_ends_ready() {
    let (sky, app) = setup!("success-aws-l4-spot.txt");
    let id = app.launch_id(&l4_spot()).await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let attempt = &job["attempts"][0];
    assert_eq!(attempt["cloud"], "AWS");
    assert_eq!(attempt["region"], "us-east-1");
    assert_eq!(attempt["zone"], "us-east-1a");
    assert_eq!(attempt["instance_type"], "g6.xlarge");
    assert_eq!(attempt["market"], "spot");
    assert_eq!(attempt["price_per_hour"], 0.35);
    assert_eq!(attempt["outcome"], "succeeded");
    assert!(
        job["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "done"),
        "{job:#}"
    );

    let cluster = job["cluster_name"].as_str().unwrap();
    let launch_call = &sky.calls()[0];
    assert_eq!(
        &launch_call[..5],
        ["launch", "-y", "-c", cluster, "--detach-run"]
    );
    let task_file = PathBuf::from(&launch_call[5]);
    assert!(
        !task_file.exists(),
        "the task file (it holds the node token) is deleted after launch"
    );

    let node = app.node(job["node_id"].as_str().unwrap()).await;
    assert_eq!(node["status"], "ready");
    assert_eq!(node["region"], "us-east-1");
    assert_eq!(node["spot_instance"], true);

    let r = app
        .delete(
            &format!("/admin/nodes/{}", node["id"].as_str().unwrap()),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        sky.calls().iter().any(|c| c == &["down", "-y", cluster]),
        "deleting the node runs sky down: {:?}",
        sky.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_second_zone_records_both_attempts() {
    let (_sky, app) = setup!("failover-aws-l4-second-zone.txt");
    let id = app.launch_id(&l4_spot()).await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert!(
        attempts[0]["reason"]
            .as_str()
            .unwrap()
            .contains("InsufficientInstanceCapacity"),
        "{}",
        attempts[0]
    );
    assert_eq!(attempts[1]["outcome"], "succeeded");
    // Stop the stand-in VM (sky down) so nothing outlives the test.
    let r = app
        .delete(
            &format!("/admin/nodes/{}", job["node_id"].as_str().unwrap()),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_that_failed_on_credentials_everywhere_is_credentials_invalid_and_torn_down() {
    let (sky, app) = setup!("14-sim-sky-launch-y-L4-spot.txt");
    let id = app.launch_id(&l4_spot()).await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["status"], "failed");
    let error = &job["error"];
    assert_eq!(error["code"], "credentials_invalid", "{error:#}");
    // `raw` quotes SkyPilot verbatim; our own words must not repeat its capacity advice.
    let ours = format!(
        "{} {} {}",
        error["title"], error["message"], error["suggestions"]
    )
    .to_lowercase();
    assert!(
        !ours.contains("relax"),
        "no 'relax your requirements' advice for a credentials problem: {error:#}"
    );
    assert!(
        error["suggestions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().contains("sky check")),
        "{error:#}"
    );
    assert!(!error["raw"].as_str().unwrap().is_empty());
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    assert!(attempts.iter().all(|a| a["outcome"] == "failed"));
    let cluster = job["cluster_name"].as_str().unwrap();
    assert!(
        sky.calls().iter().any(|c| c == &["down", "-y", cluster]),
        "a failed launch is torn down: {:?}",
        sky.calls()
    );
    assert_eq!(
        app.node(job["node_id"].as_str().unwrap()).await["status"],
        "terminated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_accelerator_from_skypilot_is_explained() {
    let (_sky, app) = setup!("15-sim-sky-launch-y-invalid-accelerator.txt");
    let id = app.launch_id(&l4_spot()).await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["error"]["code"], "invalid_accelerator", "{job:#}");
    assert!(!job["error"]["suggestions"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_hung_sky_launch_and_runs_sky_down() {
    let (sky, app) =
        setup!("21-sim-sky-launch-y-retry-until-up-killed-after-75s.txt", "FAKE_SKY_HANG" => "1");
    let id = app.launch_id(&l4_spot()).await;
    app.wait_for_job(&id, |j| j["stage"] == "provision").await;
    // Give the fake time to print and hang, like a launch retrying for capacity.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app.cancel(&id).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["status"], "cancelled");
    let cluster = job["cluster_name"].as_str().unwrap();
    assert!(
        sky.calls().iter().any(|c| c == &["down", "-y", cluster]),
        "{:?}",
        sky.calls()
    );
    // The hung `sky launch` client was killed with its process group. pgrep exits 0 when a
    // process matches, 1 when none does (anything else is a usage error, not an answer).
    let pgrep = std::process::Command::new("pgrep")
        .args(["-f", "--", &format!("-c {cluster}")])
        .status()
        .unwrap();
    assert!(
        matches!(pgrep.code(), Some(0 | 1)),
        "pgrep failed: {pgrep:?}"
    );
    let launch_pid_alive = pgrep.success();
    assert!(!launch_pid_alive, "the sky launch client is gone");
}

/// The stand-in's VM events for `cluster` ("up", "down") in order (its vms.log).
fn vm_events(sky: &FakeSky, cluster: &str) -> Vec<String> {
    std::fs::read_to_string(sky.state.path().join("vms.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["cluster"] == cluster)
        .map(|v| v["event"].as_str().unwrap().to_string())
        .collect()
}

/// The pids of the stand-in's VM for `cluster` (its echo model server and agent).
fn vm_pids(sky: &FakeSky, cluster: &str) -> Vec<u32> {
    std::fs::read_to_string(sky.state.path().join("vms.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "up" && v["cluster"] == cluster)
        .flat_map(|v| {
            v["pids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as u32)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether `pid` runs (a zombie, ended but not reaped, does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

/// `sky down` exits 0 even when the teardown failed (SkyPilot 0.14.1 prints
/// `Terminating cluster NAME...failed.` and `Cluster(s) failed. ...` on stdout): deleting the
/// node reports the failed teardown and keeps the node in `teardown_pending`, instead of
/// calling it terminated while its VM runs on. The teardown is retried (it fails twice more,
/// and DELETE retries at once too) until SkyPilot can tear it down; nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_node_whose_sky_down_fails_with_exit_0_reports_the_failed_teardown() {
    let (sky, app) = setup!("success-aws-l4-spot.txt");
    let id = app.launch_id(&l4_spot()).await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let cluster = job["cluster_name"].as_str().unwrap();
    let node_id = job["node_id"].as_str().unwrap();
    assert_eq!(app.node(node_id).await["status"], "ready");

    // From now on the stand-in's `sky down` fails the way SkyPilot's does.
    let fails = sky.state.path().join("down-fails");
    std::fs::write(&fails, "").unwrap();
    let r = app.delete_node(node_id).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert_eq!(r.error_code(), "teardown_failed", "{}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "`sky down -y {cluster}` did not remove the cluster"
        )),
        "{message}"
    );
    assert!(
        message.contains("is locked by") && message.contains("Cluster(s) failed."),
        "the error quotes SkyPilot's reason and last lines: {message}"
    );
    assert!(
        sky.calls().iter().any(|c| c == &["down", "-y", cluster]),
        "{:?}",
        sky.calls()
    );
    assert_eq!(
        app.node(node_id).await["status"],
        "teardown_pending",
        "a node whose VM was not torn down is not terminated"
    );
    assert_eq!(vm_events(&sky, cluster), ["up"], "the VM is still running");
    let pids = vm_pids(&sky, cluster);
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| running(*p)), "the VM is still running");

    // The teardown is retried by itself, and fails twice more while SkyPilot cannot. A retry
    // is counted once its `sky down` has ended, so the wait is on the count, not on the calls.
    let downs = || {
        sky.calls()
            .iter()
            .filter(|c| c[..] == ["down", "-y", cluster])
            .count()
    };
    let retries_failed = || async {
        common::metric_value(
            &app.metrics().await,
            "skylaunch_teardown_retries_total{outcome=\"failed\"}",
        )
    };
    for _ in 0..300 {
        if retries_failed().await.is_some_and(|n| n >= 2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = retries_failed().await;
    assert!(
        failed.is_some_and(|n| n >= 2.0),
        "{failed:?}: {:?}",
        sky.calls()
    );
    assert!(downs() >= 3, "retried: {:?}", sky.calls());
    let node = app.node(node_id).await;
    assert_eq!(node["status"], "teardown_pending");
    assert!(
        node["events"].to_string().contains("teardown_retry_failed"),
        "{node}"
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains("skylaunch_nodes{status=\"teardown_pending\"} 1"));
    // DELETE on such a node tries again at once.
    let before = downs();
    let r = app.delete_node(node_id).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert!(downs() > before);
    assert!(pids.iter().all(|p| running(*p)), "the VM is still running");

    // SkyPilot recovers: the next retry tears the VM down, and only then is the node gone.
    std::fs::remove_file(&fails).unwrap();
    app.wait_for_status(node_id, "terminated").await;
    assert_eq!(vm_events(&sky, cluster), ["up", "down"]);
    // Its processes end once signalled (waited for, not timed).
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|p| running(*p)) && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pids.iter().any(|p| running(*p)), "the VM was stopped");
}

/// A cancelled launch is torn down with `sky down`, which cancels SkyPilot's running launch
/// request; when that teardown fails (exit 0, failure lines on stdout) the job's log says the
/// teardown failed, never that the cluster was torn down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_launch_whose_sky_down_fails_with_exit_0_logs_the_failed_teardown() {
    let (sky, app) = setup!("success-aws-l4-spot.txt", "FAKE_SKY_DELAY_S" => "0.5");
    // The stand-in's `sky down` fails the way SkyPilot's does while this file exists.
    let fails = sky.state.path().join("down-fails");
    std::fs::write(&fails, "").unwrap();
    let id = app.launch_id(&l4_spot()).await;
    let job = app.wait_for_job(&id, |j| j["stage"] == "provision").await;
    let cluster = job["cluster_name"].as_str().unwrap().to_string();
    // Cancel once SkyPilot has the cluster (INIT): before that there is nothing to tear down,
    // and `sky down` rightly answers that the cluster is not found.
    let listed = sky.state.path().join(format!("{cluster}.status"));
    for _ in 0..200 {
        if listed.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(listed.exists(), "the stand-in lists {cluster}");
    let r = app.cancel(&id).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["status"], "cancelled", "{job:#}");
    assert!(
        sky.calls()
            .iter()
            .any(|c| c[..] == ["down", "-y", cluster.as_str()]),
        "{:?}",
        sky.calls()
    );
    let logs = app
        .get(
            &format!("/admin/launch-jobs/{id}/logs?format=json"),
            Some(ADMIN_TOKEN),
        )
        .await
        .body
        .to_string();
    assert!(logs.contains("teardown failed: "), "{logs}");
    assert!(
        logs.contains(&format!(
            "`sky down -y {cluster}` did not remove the cluster"
        )),
        "{logs}"
    );

    let node_id = job["node_id"].as_str().unwrap();
    assert_eq!(app.node(node_id).await["status"], "teardown_pending");

    // Nothing is left behind: SkyPilot recovers, the retried teardown removes the cluster, and
    // only then is the node terminated.
    std::fs::remove_file(&fails).unwrap();
    app.wait_for_status(node_id, "terminated").await;
    let status = std::process::Command::new(&sky.bin)
        .args(["status", &cluster])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout)
            .contains(&format!("Cluster '{cluster}' not found.")),
        "{status:?}"
    );
}

/// The real `sky` from PyPI, offline, with no cloud set up. It runs in its own network
/// namespace with only loopback (so nothing it tries can leave this machine), a private HOME
/// holding a small pinned catalog (tests/fixtures/sky-catalog, used because SkyPilot fetches its
/// catalogs before it checks cloud access), and usage collection off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sky_without_cloud_access_fails_with_no_cloud_access() {
    let Some(python) = common::sky_python() else {
        return;
    };
    let sky = python.with_file_name("sky");
    let home = tempfile::tempdir().unwrap();
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sky-catalog");
    for dir in ["common", "aws"] {
        let to = home.path().join(".sky/catalogs/v8").join(dir);
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(catalog.join(dir)).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
        }
    }
    let wrapper = home.path().join("sky-offline");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport HOME='{}' SKYPILOT_DISABLE_USAGE_COLLECTION=1\n\
             exec unshare -n sh -c 'ip link set lo up; \"$0\" \"$@\"; rc=$?; \"$0\" api stop >/dev/null 2>&1; exit $rc' '{}' \"$@\"\n",
            home.path().display(),
            sky.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let Some(db) = common::TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let mut config = common::test_config(&db);
    // The stand-in VMs run on this machine: their model servers are on loopback.
    config.allow_loopback_endpoints = true;
    config.sky_bin = wrapper.display().to_string();
    let app = TestApp::start(db, config).await;
    let id = app.launch_id(&l4_spot()).await;
    // The real CLI starts its own API server and then runs `sky down`: slow on a busy machine.
    let job = app
        .wait_for_job_within(&id, Duration::from_secs(300), common::job_finished)
        .await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let error = &job["error"];
    assert_eq!(error["code"], "no_cloud_access", "{error:#}");
    assert!(
        error["raw"]
            .as_str()
            .unwrap()
            .contains("NoCloudAccessError"),
        "{error:#}"
    );
    let suggestions = error["suggestions"].to_string();
    assert!(suggestions.contains("sky check"), "{error:#}");
    assert!(
        suggestions.contains("local"),
        "suggests trying the local provider: {error:#}"
    );
    let logs = app
        .get(
            &format!("/admin/launch-jobs/{id}/logs?format=json"),
            Some(ADMIN_TOKEN),
        )
        .await
        .body;
    assert!(
        logs.to_string().contains("Running on cluster"),
        "the real CLI accepted our options and task: {logs}"
    );
    assert_eq!(
        app.node(job["node_id"].as_str().unwrap()).await["status"],
        "terminated"
    );
}

/// The node token, the model server's key and the user's `envs` values (an `HF_TOKEN`) go to
/// the VM and nowhere else:
/// not in the control plane's output (at debug level), the job (its spec and `task_yaml`), its
/// events, its log, the node and its events, `/metrics`, the provider's calls, or the agent's
/// own output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_token_model_key_and_envs_values_appear_nowhere_but_on_the_vm() {
    let Some(python) = common::sky_python() else {
        return;
    };
    let sky = fake_sky(&python, "success-aws-l4-spot.txt", &[]);
    let data = tempfile::tempdir().unwrap();
    let sky_bin = sky.bin.display().to_string();
    let server =
        standins::DebugServer::start(data.path(), &[("SKYLAUNCH_SKY_BIN", &sky_bin)]).await;
    let client = server.client.clone();
    let base = server.base.clone();
    let get = |path: &str| {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    let hf_token = format!("hf_leakcheck{}", std::process::id());
    let mut request = l4_spot();
    request["envs"] = json!({"HF_TOKEN": hf_token});
    let job: Value = client
        .post(format!("{base}/admin/launch-jobs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().expect("job id").to_string();
    // Everything the job's event stream says, from the start until the final job.
    let mut seen = String::new();
    let mut events = get(&format!("/admin/launch-jobs/{id}/events"))
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, events.chunk()).await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let job: Value = get(&format!("/admin/launch-jobs/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let node_id = job["node_id"].as_str().unwrap().to_string();
    for path in [
        format!("/admin/launch-jobs/{id}"),
        "/admin/launch-jobs".to_string(),
        format!("/admin/launch-jobs/{id}/logs"),
        format!("/admin/launch-jobs/{id}/logs?format=json"),
        format!("/admin/nodes/{node_id}"),
        "/admin/nodes".to_string(),
        "/metrics".to_string(),
        "/admin/cloud-events".to_string(),
    ] {
        seen.push_str(&get(&path).await.unwrap().text().await.unwrap());
    }
    // Terminate, so the teardown's output is in the log too, then stop the server.
    client
        .delete(format!("{base}/admin/nodes/{node_id}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    seen.push_str(&server.stop().await);
    seen.push_str(&std::fs::read_to_string(sky.state.path().join("calls.log")).unwrap());
    let cluster = job["cluster_name"].as_str().unwrap();
    let token = std::fs::read_to_string(sky.state.path().join(format!("{cluster}.token")))
        .expect("the VM got its token");
    assert!(token.len() >= 32, "a real token: {token:?}");
    let agent_output =
        std::fs::read_to_string(sky.state.path().join(format!("{cluster}.agent.log"))).unwrap();
    assert!(
        agent_output.contains("registered"),
        "the agent used the token: {agent_output}"
    );
    assert!(
        !agent_output.contains(&token),
        "the agent printed its token"
    );
    assert!(
        seen.contains("DEBUG") && seen.contains(&node_id),
        "the checked output is the real thing"
    );
    if let Some(at) = seen.find(&token) {
        let context = &seen[at.saturating_sub(200)..(at + token.len() + 50).min(seen.len())];
        panic!("the node token leaked: …{context}…");
    }
    // `sky` starts from a cleared environment: none of the control plane's settings.
    let env_names = std::fs::read_to_string(sky.state.path().join("env-names.log")).unwrap();
    assert!(env_names.contains("PATH"), "{env_names}");
    assert!(!env_names.contains("SKYLAUNCH_ADMIN_TOKEN"), "{env_names}");
    // The VM got the envs value (the task SkyPilot received); the API shows only its key.
    let vm_envs =
        std::fs::read_to_string(sky.state.path().join(format!("{cluster}.envs.json"))).unwrap();
    assert!(
        vm_envs.contains(&hf_token),
        "the VM got HF_TOKEN: {vm_envs}"
    );
    assert_eq!(job["spec"]["envs"]["HF_TOKEN"], "<secret>");
    assert!(
        job["task_yaml"]
            .as_str()
            .unwrap()
            .contains("HF_TOKEN: <secret>"),
        "{job:#}"
    );
    // Nor does the model server's key, which only the VM and the load balancer hold.
    let model_key =
        std::fs::read_to_string(sky.state.path().join(format!("{cluster}.model_key"))).unwrap();
    assert!(model_key.len() >= 32, "a real key: {model_key:?}");
    assert!(job["task_yaml"]
        .as_str()
        .unwrap()
        .contains("SKYLAUNCH_MODEL_SERVER_KEY: <secret>"));
    if let Some(at) = seen.find(&model_key) {
        let context = &seen[at.saturating_sub(200)..(at + model_key.len() + 50).min(seen.len())];
        panic!("the model server's key leaked: …{context}…");
    }
    if let Some(at) = seen.find(&hf_token) {
        let context = &seen[at.saturating_sub(200)..(at + hf_token.len() + 50).min(seen.len())];
        panic!("an envs value leaked: …{context}…");
    }
}
