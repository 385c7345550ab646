//! The autoscaler end to end with the local provider: real replicas (the echo model server,
//! whose answers take longer the more requests it answers at once, and the real agent) behind
//! the real load balancer; the real reconciler measures in-flight requests and moves the
//! replica count, recording each decision as the drift of the launches and drains it causes.

mod common;
mod standins;

use std::time::Duration;

use common::{Backend, TestApp, ADMIN_TOKEN};
use serde_json::{json, Value};

async fn app() -> Option<TestApp> {
    app_with(|_| {}).await
}

async fn app_with(tweak: impl FnOnce(&mut skylaunch::config::ServeConfig)) -> Option<TestApp> {
    standins::local_app(Backend::Sqlite, |config| {
        config.replica_unhealthy_grace = Duration::from_secs(5);
        config.replica_drain_timeout = Duration::from_secs(20);
        tweak(config);
    })
    .await
}

fn drifts(actions: &[Value], drift: &str) -> Vec<Value> {
    actions
        .iter()
        .filter(|a| a["drift"] == drift)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_scales_up_and_the_quiet_after_it_scales_down_without_a_failed_request() {
    let Some(app) = app().await else { return };
    app.create_deployment(&json!({
        "name": "auto", "model": "echo/auto", "provider": "local", "replicas": 1,
        // Each answer takes 100 ms plus 50 ms per request answered at the same time.
        "envs": {"ECHO_DELAY_MS": "100", "ECHO_DELAY_PER_REQUEST_MS": "50"},
        "autoscale": {"min_replicas": 1, "max_replicas": 3, "metric": "in_flight", "target": 2,
                      "scale_up_delay_s": 1, "scale_down_delay_s": 2, "window_s": 2},
    }))
    .await;
    app.wait_deployment("auto", "1 ready replica", |d| d["replicas"]["ready"] == 1)
        .await;

    // Six clients at once: 6 requests in flight on one replica, three times the target.
    let loads: Vec<_> = (0..6).map(|_| app.chat_load("echo/auto")).collect();
    let d = app
        .wait_deployment("auto", "3 ready replicas under load", |d| {
            d["replicas"]["ready"] == 3 && d["replicas"]["desired"] == 3
        })
        .await;
    let decision = &d["autoscale"]["last_decision"];
    assert_eq!(
        (decision["from"].as_u64(), decision["to"].as_u64()),
        (Some(1), Some(3)),
        "{d:#}"
    );
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("above the target 2.00"),
        "{d:#}"
    );
    assert_eq!(d["autoscale"]["metric"], "in_flight");
    let actions = app
        .wait_actions("auto", "the scale-up launches done", |all| {
            drifts(all, "scale_up")
                .iter()
                .filter(|a| a["state"] == "completed")
                .count()
                == 2
        })
        .await;
    for a in drifts(&actions, "scale_up") {
        assert_eq!(a["kind"], "launch_replica");
        assert!(
            a["reason"]
                .as_str()
                .unwrap()
                .contains("autoscale: in_flight"),
            "{a:#}"
        );
    }
    let mut answered = 0;
    for load in loads {
        let (ok, failed) = load.stop().await;
        assert_eq!(failed, 0, "no request failed while scaling up");
        answered += ok;
    }
    assert!(answered > 0);

    // A trickle of traffic (one client): far below the target, so replicas go one at a
    // time, each drained before it is terminated, and no request fails meanwhile.
    let trickle = app.chat_load("echo/auto");
    let d = app
        .wait_deployment("auto", "back to 1 replica", |d| {
            d["replicas"]["desired"] == 1
                && d["replicas"]["ready"] == 1
                && d["nodes"].as_array().unwrap().len() == 1
        })
        .await;
    let (ok, failed) = trickle.stop().await;
    assert_eq!(
        failed, 0,
        "no request failed while scaling down ({ok} answered)"
    );
    assert!(ok > 0);
    assert!(
        d["autoscale"]["last_decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("below the target"),
        "{d:#}"
    );
    let actions = app
        .wait_actions(
            "auto",
            "the scale-down drains and terminations done",
            |all| {
                let down = drifts(all, "scale_down");
                ["drain_replica", "terminate_replica"].iter().all(|kind| {
                    down.iter()
                        .filter(|a| a["kind"] == *kind && a["state"] == "completed")
                        .count()
                        == 2
                })
            },
        )
        .await;
    assert!(
        drifts(&actions, "excess_replica").is_empty(),
        "{actions:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_policies_are_checked_before_anything_is_stored() {
    let Some(app) = app().await else { return };
    let base = json!({"name": "bad", "model": "echo/bad", "provider": "local", "replicas": 1});
    for (autoscale, field) in [
        (
            json!({"min_replicas": 0, "max_replicas": 0, "metric": "rps", "target": 1}),
            "autoscale.max_replicas",
        ),
        (
            json!({"min_replicas": 0, "max_replicas": 2, "metric": "rps", "target": 1,
                   "cold_start_timeout_s": 0}),
            "autoscale.cold_start_timeout_s",
        ),
        (
            json!({"min_replicas": 3, "max_replicas": 2, "metric": "rps", "target": 1}),
            "autoscale.max_replicas",
        ),
        (
            json!({"min_replicas": 1, "max_replicas": 2, "metric": "rps", "target": 0}),
            "autoscale.target",
        ),
        (
            json!({"min_replicas": 1, "max_replicas": 2, "metric": "rps", "target": 1,
                   "window_s": 0}),
            "autoscale.window_s",
        ),
        (
            json!({"min_replicas": 1, "max_replicas": 2, "metric": "rps", "target": 1,
                   "scale_up_delay_s": 100000}),
            "autoscale.scale_up_delay_s",
        ),
        (
            json!({"min_replicas": 2, "max_replicas": 3, "metric": "rps", "target": 1}),
            "replicas",
        ),
    ] {
        let mut body = base.clone();
        body["autoscale"] = autoscale;
        let r = app
            .post("/admin/deployments", Some(ADMIN_TOKEN), &body)
            .await;
        assert_eq!(r.status.as_u16(), 422, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{}", r.body);
    }
    let mut unknown = base.clone();
    unknown["autoscale"] =
        json!({"min_replicas": 1, "max_replicas": 2, "metric": "latency", "target": 1});
    let r = app
        .post("/admin/deployments", Some(ADMIN_TOKEN), &unknown)
        .await;
    assert!(r.status.is_client_error(), "{}", r.body);
    assert_eq!(
        app.get("/admin/deployments/bad", Some(ADMIN_TOKEN))
            .await
            .status
            .as_u16(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_deployment_scales_to_zero_and_requests_wait_for_its_cold_start() {
    let Some(app) = app_with(|c| c.cold_start_max_held = 2).await else {
        return;
    };
    app.create_deployment(&json!({
        "name": "cold", "model": "echo/cold", "provider": "local", "replicas": 1,
        "autoscale": {"min_replicas": 0, "max_replicas": 2, "metric": "in_flight", "target": 4,
                      "scale_to_zero_after_s": 2, "cold_start_timeout_s": 120, "window_s": 2},
    }))
    .await;
    app.wait_deployment("cold", "1 ready replica", |d| d["replicas"]["ready"] == 1)
        .await;
    // Nobody asks for it: it goes to zero, and /v1/models says so.
    let d = app
        .wait_deployment("cold", "zero replicas", |d| {
            d["replicas"]["desired"] == 0 && d["nodes"].as_array().unwrap().is_empty()
        })
        .await;
    assert!(
        d["autoscale"]["last_decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("scale to zero"),
        "{d:#}"
    );
    let models = app.get("/v1/models", None).await.body;
    let listed = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "echo/cold")
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["status"], "scaled_to_zero", "{models:#}");

    // Three requests at once at zero replicas: two wait (the bound) and are answered once a
    // replica is up; the third is told to come back.
    let send = || {
        let (client, url) = (app.client.clone(), app.url("/v1/chat/completions"));
        async move {
            let r = client
                .post(url)
                .timeout(Duration::from_secs(120))
                .json(&json!({"model": "echo/cold", "messages": [{"role": "user", "content": "wake"}]}))
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").cloned();
            (
                r.status().as_u16(),
                retry_after,
                r.json::<Value>().await.unwrap(),
            )
        }
    };
    let watch = async {
        // While they wait, the deployment says so.
        app.wait_deployment("cold", "requests waiting for its cold start", |d| {
            d["autoscale"]["waiting_requests"] == 2
        })
        .await;
    };
    let ((a, b, c), ()) = tokio::join!(async { tokio::join!(send(), send(), send()) }, watch);
    let mut answers = vec![a, b, c];
    answers.sort_by_key(|(status, _, _)| *status);
    assert_eq!(answers[0].0, 200, "{answers:?}");
    assert_eq!(answers[1].0, 200, "{answers:?}");
    assert_eq!(
        answers[0].2["choices"][0]["message"]["content"],
        "echo: wake"
    );
    let (status, retry_after, body) = &answers[2];
    assert_eq!(*status, 503, "{body}");
    assert_eq!(body["error"]["code"], "cold_start_busy", "{body}");
    assert!(retry_after.is_some(), "503 says when to try again");
    let d = app.get_deployment("cold").await.body;
    assert!(d["replicas"]["desired"].as_i64().unwrap() >= 1, "{d:#}");
    let actions = app
        .get("/admin/deployments/cold/actions", Some(ADMIN_TOKEN))
        .await
        .body;
    let woke = actions["actions"].as_array().unwrap().iter().any(|a| {
        a["drift"] == "scale_up"
            && a["reason"]
                .as_str()
                .unwrap()
                .contains("requests wait at zero replicas")
    });
    assert!(woke, "{actions:#}");
}

/// An agent that stops reporting makes the signal stale: an idle deployment keeps its replicas
/// while it is, and scales down once the agent reports again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_report_holds_off_a_scale_down_until_the_agent_reports_again() {
    // The quiet replica stays merely unhealthy (not offline, not replaced) during the test.
    let Some(app) = app_with(|c| {
        c.replica_unhealthy_grace = Duration::from_secs(600);
        c.offline_after = Duration::from_secs(600);
    })
    .await
    else {
        return;
    };
    app.create_deployment(&json!({
        "name": "quiet", "model": "echo/quiet", "provider": "local", "replicas": 2,
        "autoscale": {"min_replicas": 1, "max_replicas": 2, "metric": "in_flight", "target": 2,
                      "scale_up_delay_s": 1, "scale_down_delay_s": 8, "window_s": 2},
    }))
    .await;
    let d = app
        .wait_deployment("quiet", "2 ready replicas", |d| d["replicas"]["ready"] == 2)
        .await;
    // One agent freezes (SIGSTOP): its node stops reporting.
    let node = d["nodes"][0]["node_id"].as_str().unwrap().to_string();
    let agents = standins::agents_of(&node);
    assert_eq!(agents.len(), 1, "{agents:?}");
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &agents[0].to_string()])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success());
    app.wait_deployment("quiet", "a stale signal", |d| {
        d["autoscale"]["stale"] == true
    })
    .await;
    // Idle for longer than the scale-down delay, but stale: nothing is removed.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let held = app.get_deployment("quiet").await.body;
    assert_eq!(held["replicas"]["desired"], 2, "{held:#}");
    assert!(held["autoscale"]["last_decision"].is_null(), "{held:#}");
    // It reports again: the idle deployment scales down.
    assert!(signal("-CONT").success());
    let d = app
        .wait_deployment("quiet", "scaled down to 1", |d| {
            d["replicas"]["desired"] == 1
        })
        .await;
    assert!(
        d["autoscale"]["last_decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("below the target"),
        "{d:#}"
    );
}
