//! Deployments whose replicas launch through the SkyPilot provider and the stand-in `sky`
//! (tests/fake-sky), which replays recorded SkyPilot output and plays each VM with the real
//! agent and echo model server: spot interruption notices (the agent's metadata service is a
//! local stand-in that starts answering with a notice), spot capacity that vanishes (a
//! capacity transcript) and comes back, and the approval of a guarded on-demand fallback.

mod common;
mod standins;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use standins::{fake_sky, fixture, FakeSky};

const SPOT_CAPACITY: &str = "spot-capacity-aws-l4-all-zones.txt";

async fn app_with_sky(sky: &FakeSky, backoff: Duration) -> Option<TestApp> {
    let db = common::TestDb::new(Backend::Sqlite).await?;
    let mut config = common::test_config(&db);
    config.allow_loopback_endpoints = true;
    config.sky_bin = sky.bin.display().to_string();
    config.registration_timeout = Duration::from_secs(20);
    config.job_lease = Duration::from_secs(3);
    config.reconcile_interval = Duration::from_millis(200);
    config.replica_unhealthy_grace = Duration::from_secs(1);
    config.replica_drain_timeout = Duration::from_secs(10);
    config.deployment_backoff = backoff;
    config.spot_swap_back_interval = Duration::from_secs(2);
    Some(TestApp::start(db, config).await)
}

macro_rules! setup {
    ($backoff:expr $(, $k:expr => $v:expr)*) => {{
        let Some(python) = common::sky_python() else { return };
        let sky = fake_sky(&python, "success-aws-l4-spot.txt", &[$(($k, $v)),*]);
        let Some(app) = app_with_sky(&sky, $backoff).await else { return };
        (sky, app)
    }};
}

fn spot_deployment(name: &str, replicas: u32) -> Value {
    json!({"name": name, "model": "meta-llama/Llama-3.1-8B-Instruct", "provider": "skypilot",
           "gpu": "L4", "regions": ["us-east-1"], "replicas": replicas,
           "spot": {"use_spot": true}})
}

fn serving(d: &Value, replicas: i64) -> bool {
    d["status"] == "serving"
        && d["replicas"]["ready"] == replicas
        && d["nodes"].as_array().unwrap().len() == replicas as usize
}

fn launches(sky: &FakeSky) -> usize {
    sky.calls()
        .iter()
        .filter(|c| c.get(1).map(String::as_str) == Some("launch"))
        .count()
}

/// A stand-in for AWS's instance metadata service (IMDSv2) on loopback: tokens for anyone; the
/// spot `instance-action` is 404 until the test arms a notice, which then goes to the first agent
/// that polls (each agent stops polling once it has one), so exactly one replica is preempted.
struct Imds {
    url: String,
    armed: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

async fn imds() -> Imds {
    use axum::routing::{get, put};
    let armed = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let (a, s) = (armed.clone(), served.clone());
    let router = axum::Router::new()
        .route("/latest/api/token", put(|| async { "stand-in-imds-token" }))
        .route(
            "/latest/meta-data/spot/instance-action",
            get(move || {
                let (armed, served) = (a.clone(), s.clone());
                async move {
                    if armed.swap(false, Ordering::SeqCst) {
                        served.fetch_add(1, Ordering::SeqCst);
                        (
                            StatusCode::OK,
                            r#"{"action": "terminate", "time": "2026-12-06T20:00:00Z"}"#
                                .to_string(),
                        )
                    } else {
                        (StatusCode::NOT_FOUND, "Not Found".to_string())
                    }
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Imds { url, armed, served }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_gets_its_replacement_launched_while_the_node_drains_and_no_request_fails() {
    let Some(python) = common::sky_python() else {
        return;
    };
    let metadata = imds().await;
    let sky = fake_sky(
        &python,
        "success-aws-l4-spot.txt",
        &[
            ("FAKE_SKY_IMDS_URL", metadata.url.as_str()),
            ("FAKE_SKY_SPOT_POLL_INTERVAL", "200ms"),
        ],
    );
    let Some(app) = app_with_sky(&sky, Duration::from_secs(1)).await else {
        return;
    };
    app.create_deployment(&spot_deployment("spotty", 2)).await;
    let before = app
        .wait_deployment("spotty", "2 ready replicas", |d| serving(d, 2))
        .await;
    assert!(before["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["market"] == "spot"));
    // Continuous load while one replica is preempted.
    let load = app.chat_load("meta-llama/Llama-3.1-8B-Instruct");
    metadata.armed.store(true, Ordering::SeqCst);
    let replaced = app
        .wait_actions("spotty", "a completed spot replacement", |all| {
            all.iter().any(|a| {
                a["kind"] == "replace_replica"
                    && a["drift"] == "spot_interruption"
                    && a["state"] == "completed"
            })
        })
        .await;
    assert_eq!(metadata.served.load(Ordering::SeqCst), 1);
    let replace = replaced
        .iter()
        .find(|a| a["drift"] == "spot_interruption" && a["kind"] == "replace_replica")
        .unwrap();
    let doomed = replace["node_id"].as_str().unwrap().to_string();
    assert!(
        replace["reason"]
            .as_str()
            .unwrap()
            .contains("0 requests for the model failed meanwhile"),
        "{replace:#}"
    );
    // The replacement was launched while the doomed node was still there (draining), not
    // after it was gone.
    app.wait_deployment("spotty", "the doomed node retired", |d| {
        serving(d, 2)
            && d["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["node_id"] != doomed)
    })
    .await;
    let node = app.wait_for_status(&doomed, "terminated").await;
    let reasons: Vec<String> = node["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["to_status"], e["reason"]))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("draining") && r.contains("spot interruption notice")),
        "{reasons:#?}"
    );
    let job = app
        .get(
            &format!(
                "/admin/launch-jobs/{}",
                replace["launch_job_id"].as_str().unwrap()
            ),
            Some(ADMIN_TOKEN),
        )
        .await
        .body;
    let terminated_event = node["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to_status"] == "terminated")
        .expect("a terminated event")
        .clone();
    let ms = |v: &Value| skylaunch::clock::parse_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(
        ms(&job["created_at"]) < ms(&terminated_event["at"]),
        "the replacement's launch ({}) started before the node was gone ({})",
        job["created_at"],
        terminated_event["at"]
    );
    let (ok, failed) = load.stop().await;
    assert!(ok > 0);
    assert_eq!(failed, 0, "no request failed meanwhile");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            "skylaunch_deployment_replacement_seconds_count{drift=\"spot_interruption\"} 1"
        ),
        "{metrics}"
    );
    drop(sky);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spot_capacity_backs_off_with_a_bounded_number_of_launches_until_retry_now() {
    let (sky, app) = setup!(Duration::from_secs(2));
    std::fs::write(
        sky.state.path().join("spot-transcript"),
        fixture(SPOT_CAPACITY).display().to_string(),
    )
    .unwrap();
    app.create_deployment(&spot_deployment("scarce", 1)).await;
    let d = app
        .wait_deployment("scarce", "unsatisfiable", |d| {
            d["status"] == "unsatisfiable"
        })
        .await;
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("spot") && reason.contains("retry"),
        "{reason}"
    );
    assert!(d["unsatisfiable_until"].is_string(), "{d:#}");
    // Over the next 6 s, a 2 s back-off that doubles allows at most two more attempts.
    let at_first = launches(&sky);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let more = launches(&sky) - at_first;
    assert!(
        more <= 2,
        "{more} launches in 6 s: the back-off must hold them"
    );
    let failed = app.deployment_actions("scarce").await;
    assert!(
        failed
            .iter()
            .all(|a| a["state"] == "failed" && a["reason"].as_str().unwrap().contains("capacity")),
        "{failed:#?}"
    );
    // Capacity is back; "retry now" tries at once, whatever the back-off.
    std::fs::remove_file(sky.state.path().join("spot-transcript")).unwrap();
    let r = app
        .post(
            "/admin/deployments/scarce/retry",
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_ne!(r.body["status"], "unsatisfiable");
    let d = app
        .wait_deployment("scarce", "serving after retry", |d| serving(d, 1))
        .await;
    assert_eq!(d["reason"], Value::Null);
    assert_eq!(d["unsatisfiable_until"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_on_demand_fallback_waits_for_approval_and_is_cancelled_when_spot_returns() {
    let (sky, app) = setup!(Duration::from_secs(1));
    let capacity_gone = sky.state.path().join("spot-transcript");
    std::fs::write(&capacity_gone, fixture(SPOT_CAPACITY).display().to_string()).unwrap();
    let mut body = spot_deployment("frugal", 1);
    body["spot"]["fallback"] = json!("on_demand");
    body["approval"] = json!({"guarded": ["on_demand_fallback"]});
    app.create_deployment(&body).await;
    let pending = app
        .wait_actions("frugal", "a pending on-demand fallback", |all| {
            all.iter().any(|a| a["state"] == "pending")
        })
        .await;
    let fallback = pending
        .iter()
        .find(|a| a["state"] == "pending")
        .unwrap()
        .clone();
    assert_eq!(fallback["kind"], "launch_replica");
    assert_eq!(fallback["risk"], "guarded");
    assert_eq!(fallback["market"], "on_demand");
    assert!(fallback["reason"]
        .as_str()
        .unwrap()
        .contains("waits for approval"));
    let listed = app
        .get("/admin/actions?state=pending", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(listed.body["actions"][0]["id"], fallback["id"]);
    assert_eq!(
        app.get_deployment("frugal").await.body["pending_actions"],
        1
    );
    // Approved: it runs at once, back-off or not, and the replica is on-demand.
    let id = fallback["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/admin/actions/{id}/approve"),
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["state"], "approved");
    let again = app
        .post(
            &format!("/admin/actions/{id}/approve"),
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.error_code(), "action_not_pending");
    let d = app
        .wait_deployment("frugal", "serving on on-demand", |d| {
            d["replicas"]["ready"].as_i64() >= Some(1)
                && d["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["market"] == "on_demand" && n["status"] == "ready")
        })
        .await;
    assert!(d["hourly_usd"].as_f64().unwrap() > 0.0);

    // A second replica: its spot launch fails too, and its fallback waits. Then spot capacity
    // returns: the spot retry fills the slot and the pending fallback is cancelled by itself.
    app.scale_deployment("frugal", 2).await;
    let second = app
        .wait_actions("frugal", "a second pending fallback", |all| {
            all.iter()
                .any(|a| a["state"] == "pending" && a["slot"] == 1)
        })
        .await;
    let second = second
        .iter()
        .find(|a| a["state"] == "pending")
        .unwrap()
        .clone();
    std::fs::remove_file(&capacity_gone).unwrap();
    let all = app
        .wait_actions("frugal", "the fallback cancelled by itself", |all| {
            all.iter()
                .any(|a| a["id"] == second["id"] && a["state"] == "cancelled")
        })
        .await;
    let cancelled = all.iter().find(|a| a["id"] == second["id"]).unwrap();
    assert_eq!(cancelled["reason"], "drift_resolved_auto");
    app.wait_deployment("frugal", "2 ready", |d| serving(d, 2))
        .await;
    // Spot is back: the on-demand stand-in of slot 0 is swapped back to spot, and it serves
    // until its spot replacement is ready, so the ready count never drops.
    let mut last = Value::Null;
    for _ in 0..900 {
        last = app.get_deployment("frugal").await.body;
        assert!(
            last["replicas"]["ready"].as_i64() >= Some(2),
            "ready dropped: {last:#}"
        );
        let nodes = last["nodes"].as_array().unwrap();
        if serving(&last, 2) && nodes.iter().all(|n| n["market"] == "spot") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["market"] == "spot"),
        "{last:#}"
    );
    let swapped = app.deployment_actions("frugal").await;
    assert!(
        swapped.iter().any(|a| a["kind"] == "replace_replica"
            && a["state"] == "completed"
            && a["reason"].as_str().unwrap().contains("spot")),
        "{swapped:#?}"
    );
    // A cancelled action cannot be rejected any more.
    let r = app
        .post(
            &format!("/admin/actions/{}/reject", second["id"].as_str().unwrap()),
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_keeps_failing_stops_its_rollout_and_the_old_one_serves_until_rolled_back()
{
    let (sky, app) = setup!(Duration::from_secs(1));
    let mut spec = spot_deployment("steady", 1);
    spec["spot"] = json!({"use_spot": false});
    app.create_deployment(&spec).await;
    let before = app
        .wait_deployment("steady", "1 ready", |d| serving(d, 1))
        .await;
    let old = before["nodes"][0]["node_id"].as_str().unwrap().to_string();
    // Revision 2's replicas fail their setup, every time.
    let failing = sky.state.path().join("transcript");
    std::fs::write(
        &failing,
        fixture("setup-failure-aws-l4.txt").display().to_string(),
    )
    .unwrap();
    spec["envs"] = json!({"VLLM_EXTRA_ARGS": "--broken"});
    let r = app.put_admin("/admin/deployments/steady", &spec).await;
    assert_eq!(r.body["revision"], 2, "{}", r.body);
    let stopped = app
        .wait_deployment("steady", "rollout_failed", |d| {
            d["status"] == "rollout_failed"
        })
        .await;
    let reason = stopped["reason"].as_str().unwrap();
    assert!(
        reason.contains("revision 2 failed to launch 3 times"),
        "{reason}"
    );
    assert!(
        reason.to_lowercase().contains("setup"),
        "the launch error is named: {reason}"
    );
    // The old revision keeps serving, and no more launches are tried.
    assert_eq!(stopped["nodes"][0]["node_id"], old);
    assert_eq!(stopped["nodes"][0]["status"], "ready");
    let chat = json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": [{"role": "user", "content": "x"}]});
    let answer = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let tried = launches(&sky);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        launches(&sky),
        tried,
        "a failed rollout launches nothing more"
    );
    // Roll back: revision 3 runs what revision 1 ran, so the old replica is kept as it is.
    std::fs::remove_file(&failing).unwrap();
    let r = app
        .post(
            "/admin/deployments/steady/rollback",
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["revision"], 3);
    let after = app
        .wait_deployment("steady", "serving again", |d| serving(d, 1))
        .await;
    assert_eq!(after["nodes"][0]["node_id"], old, "nothing was replaced");
    assert_eq!(after["reason"], Value::Null);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(launches(&sky), tried, "the rollback launched nothing");
}

/// A teardown takes minutes with a real cloud. One deployment's slow `sky down` must not hold up
/// another deployment's healing: retirements run beside the reconciler's passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_teardown_in_one_deployment_does_not_hold_up_healing_in_another() {
    let (sky, app) = setup!(Duration::from_secs(1));
    let mut spec = spot_deployment("slowdown", 1);
    spec["spot"] = json!({"use_spot": false});
    app.create_deployment(&spec).await;
    spec["name"] = json!("healer");
    spec["model"] = json!("meta-llama/Llama-3.1-70B-Instruct");
    app.create_deployment(&spec).await;
    app.wait_deployment("slowdown", "1 ready", |d| serving(d, 1))
        .await;
    // Its launch job over too: what is torn down below is the launched cluster (`sky down`), not
    // a launch still running.
    app.wait_actions("slowdown", "its launch completed", |all| {
        all.iter().all(|a| a["state"] == "completed")
    })
    .await;
    let healer = app
        .wait_deployment("healer", "1 ready", |d| serving(d, 1))
        .await;
    let victim = healer["nodes"][0]["node_id"].as_str().unwrap().to_string();
    // Every teardown now takes a minute; scaling "slowdown" to 0 starts one.
    std::fs::write(sky.state.path().join("down-slow"), "60").unwrap();
    app.scale_deployment("slowdown", 0).await;
    app.wait_actions("slowdown", "a running termination", |all| {
        all.iter()
            .any(|a| a["kind"] == "terminate_replica" && a["state"] == "running")
    })
    .await;
    // Meanwhile "healer"'s replica dies (its agent stops heartbeating): it is replaced while
    // the other deployment's teardown still runs.
    for pid in standins::agents_of(&victim) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    app.wait_actions("healer", "its replacement launched", |all| {
        all.iter().any(|a| {
            a["kind"] == "replace_replica"
                && matches!(a["state"].as_str(), Some("running" | "completed"))
        })
    })
    .await;
    let slow = app.deployment_actions("slowdown").await;
    assert!(
        slow.iter()
            .any(|a| a["kind"] == "terminate_replica" && a["state"] == "running"),
        "the slow teardown is still under way: {slow:#?}"
    );
    std::fs::remove_file(sky.state.path().join("down-slow")).unwrap();
}
