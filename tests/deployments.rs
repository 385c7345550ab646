//! Deployments end to end with the local provider: the real reconciler launches replicas
//! through real launch jobs, which start the real echo model server and the real agent as
//! processes on this machine. A replica's "VM dies" by killing its processes.

mod common;
mod standins;

use std::time::Duration;

use common::{Backend, Reply, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn app_with(
    backend: Backend,
    tweak: impl FnOnce(&mut skylaunch::config::ServeConfig),
) -> Option<TestApp> {
    standins::local_app(backend, |config| {
        config.replica_unhealthy_grace = Duration::from_secs(1);
        config.replica_drain_timeout = Duration::from_secs(10);
        config.deployment_backoff = Duration::from_secs(1);
        tweak(config);
    })
    .await
}

macro_rules! app {
    ($backend:expr) => {
        match app_with($backend, |_| {}).await {
            Some(app) => app,
            None => return,
        }
    };
}

fn deployment(name: &str, replicas: u32) -> Value {
    json!({"name": name, "model": format!("echo/{name}"), "provider": "local", "replicas": replicas})
}

async fn put(app: &TestApp, path: &str, body: &Value) -> Reply {
    app.put_admin(path, body).await
}

async fn wait_serving(app: &TestApp, name: &str, replicas: i64) -> Value {
    app.wait_deployment(name, &format!("{replicas} ready replicas"), |d| {
        d["status"] == "serving"
            && d["replicas"]["ready"] == replicas
            && d["replicas"]["launching"] == 0
            && d["replicas"]["draining"] == 0
            && d["nodes"].as_array().unwrap().len() == replicas as usize
    })
    .await
}

use common::node_ids;

/// The processes a local launch started for its node (its agent and its model server).
fn processes_of(job_id: &str) -> Vec<u32> {
    standins::processes_with_env("SKYLAUNCH_LOCAL_JOB", job_id)
}

/// Kills every process a local launch started for its node, as if its VM died.
fn kill_vm(job_id: &str) -> usize {
    let pids = processes_of(job_id);
    for pid in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    pids.len()
}

async fn chat(app: &TestApp, model: &str) -> reqwest::Result<reqwest::Response> {
    app.client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
}

async fn a_deployment_is_launched_healed_scaled_and_deleted(backend: Backend) {
    let app = app!(backend);
    let created = app.create_deployment(&deployment("chat", 2)).await;
    assert_eq!(created["revision"], 1);
    assert_eq!(created["replicas"]["desired"], 2);
    let d = wait_serving(&app, "chat", 2).await;
    // The replicas are ordinary nodes that know their deployment, and serve the model.
    for id in node_ids(&d) {
        let node = app.node(&id).await;
        assert_eq!(node["deployment"], "chat");
        assert_eq!(node["deployment_revision"], 1);
        assert_eq!(node["status"], "ready");
    }
    let answer: Value = chat(&app, "echo/chat").await.unwrap().json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: hi");
    let launched = app
        .wait_actions("chat", "two completed launches", |all| {
            all.iter().all(|a| a["state"] == "completed")
        })
        .await;
    assert_eq!(launched.len(), 2, "{launched:#?}");
    assert!(launched.iter().all(|a| a["kind"] == "launch_replica"
        && a["drift"] == "missing_replica"
        && a["risk"] == "low"));

    // One replica's VM dies: it is replaced with no admin action.
    let victim = d["nodes"][0].clone();
    let victim_id = victim["node_id"].as_str().unwrap();
    assert!(kill_vm(victim["launch_job_id"].as_str().unwrap()) >= 2);
    let healed = app
        .wait_deployment("chat", "its dead replica replaced", |d| {
            d["status"] == "serving"
                && d["replicas"]["ready"] == 2
                && !node_ids(d).contains(&victim_id.to_string())
        })
        .await;
    assert_eq!(healed["nodes"].as_array().unwrap().len(), 2);
    let dead = app.wait_for_status(victim_id, "terminated").await;
    assert_eq!(dead["deployment"], "chat");
    let all = app
        .wait_actions("chat", "the replacement completed", |all| {
            all.iter()
                .any(|a| a["kind"] == "replace_replica" && a["state"] == "completed")
        })
        .await;
    let replace = all
        .iter()
        .find(|a| a["kind"] == "replace_replica")
        .expect("a replace action");
    assert_eq!(replace["drift"], "unhealthy_replica");
    assert_eq!(replace["node_id"], victim_id);
    assert_eq!(replace["state"], "completed", "{replace:#}");
    assert!(all
        .iter()
        .any(|a| a["kind"] == "terminate_replica" && a["node_id"] == victim_id));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            "skylaunch_deployment_replacement_seconds_count{drift=\"unhealthy_replica\"} 1"
        ),
        "{metrics}"
    );

    // Scale 2 -> 3 -> 1.
    let scaled = app.scale_deployment("chat", 3).await;
    assert_eq!(scaled["revision"], 1, "scaling is not a new revision");
    wait_serving(&app, "chat", 3).await;
    app.scale_deployment("chat", 1).await;
    let one = wait_serving(&app, "chat", 1).await;
    assert_eq!(one["nodes"][0]["slot"], 0, "the first slot stays");
    assert!(app
        .deployment_actions("chat")
        .await
        .iter()
        .any(|a| a["kind"] == "drain_replica" && a["drift"] == "excess_replica"));

    // Delete: every replica drained and terminated, the deployment gone, nothing left running.
    let all_nodes: Vec<Value> = app.get("/admin/nodes", Some(ADMIN_TOKEN)).await.body["nodes"]
        .as_array()
        .unwrap()
        .clone();
    let r = app
        .delete("/admin/deployments/chat", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["status"], "deleting");
    for _ in 0..600 {
        if app.get_deployment("chat").await.status == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = app.get_deployment("chat").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
    assert_eq!(gone.error_code(), "deployment_not_found");
    for n in &all_nodes {
        let node = app.node(n["id"].as_str().unwrap()).await;
        assert_eq!(node["status"], "terminated", "{node:#}");
        assert_eq!(
            processes_of(n["launch_job_id"].as_str().unwrap()),
            Vec::<u32>::new()
        );
    }
    let r = chat(&app, "echo/chat").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

async fn a_rolling_update_under_load_fails_no_request(backend: Backend) {
    let app = app!(backend);
    app.create_deployment(&deployment("roll", 2)).await;
    let before = wait_serving(&app, "roll", 2).await;
    let old = node_ids(&before);
    // A client sends requests one after another for the whole update.
    let load = app.chat_load("echo/roll");
    let mut spec = deployment("roll", 2);
    spec["envs"] = json!({"MODEL_REVISION": "b"});
    let r = put(&app, "/admin/deployments/roll", &spec).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["revision"], 2);
    assert_eq!(r.body["spec"]["envs"]["MODEL_REVISION"], "<secret>");
    let after = app
        .wait_deployment("roll", "both replicas at revision 2", |d| {
            d["status"] == "serving"
                && d["nodes"].as_array().unwrap().len() == 2
                && d["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|n| n["revision"] == 2 && n["status"] == "ready")
        })
        .await;
    let (ok, failed) = load.stop().await;
    assert!(ok > 0);
    assert_eq!(failed, 0, "no request failed during the rollout");
    for id in &old {
        assert!(!node_ids(&after).contains(id));
        app.wait_for_status(id, "terminated").await;
    }
    let all = app.deployment_actions("roll").await;
    assert!(all
        .iter()
        .any(|a| a["kind"] == "replace_replica" && a["drift"] == "outdated_revision"));
    // The same spec again changes nothing; so does the spec as the API shows it, its secret
    // values masked: `<secret>` keeps the stored value.
    let r = put(&app, "/admin/deployments/roll", &spec).await;
    assert_eq!(r.body["revision"], 2);
    let mut shown = r.body["spec"].clone();
    assert_eq!(shown["envs"]["MODEL_REVISION"], "<secret>");
    let r = put(&app, "/admin/deployments/roll", &shown).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["revision"], 2,
        "the masked value kept the stored one"
    );
    shown["envs"]["NEVER_SET"] = json!("<secret>");
    let r = put(&app, "/admin/deployments/roll", &shown).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["error"]["field"], "envs");
    // Roll back: revision 3 runs what revision 1 ran.
    let r = app
        .post(
            "/admin/deployments/roll/rollback",
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["revision"], 3);
    assert!(r.body["spec"]["envs"].as_object().unwrap().is_empty());
}

async fn bad_requests_change_nothing(backend: Backend) {
    let app = app!(backend);
    let mut bad = deployment("x", 1);
    bad["provider"] = json!("skypilot");
    bad["gpu"] = json!("A1000");
    let r = app
        .post("/admin/deployments", Some(ADMIN_TOKEN), &bad)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_accelerator");
    assert_eq!(r.body["error"]["field"], "gpu");
    assert!(r.body["error"]["suggestions"]
        .as_array()
        .unwrap()
        .contains(&json!("A100")));
    let r = app
        .post(
            "/admin/deployments",
            Some(ADMIN_TOKEN),
            &deployment("Bad_Name", 1),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["suggestions"], json!(["bad-name"]));
    let mut no_update = deployment("x", 1);
    no_update["update"] = json!({"max_surge": 0, "max_unavailable": 0});
    let r = app
        .post("/admin/deployments", Some(ADMIN_TOKEN), &no_update)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["field"], "update");
    let r = app.get("/admin/deployments", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.body["deployments"], json!([]), "nothing was stored");
    assert_eq!(
        app.get("/admin/deployments", None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Zero replicas: stored, nothing launched.
    app.create_deployment(&deployment("idle", 0)).await;
    let again = app
        .post(
            "/admin/deployments",
            Some(ADMIN_TOKEN),
            &deployment("idle", 0),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.error_code(), "deployment_exists");
    let mut renamed = deployment("other", 0);
    renamed["name"] = json!("other");
    let r = put(&app, "/admin/deployments/idle", &renamed).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["field"], "name");
    let r = app
        .post(
            "/admin/deployments/idle/scale",
            Some(ADMIN_TOKEN),
            &json!({"replicas": 1000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .post(
            "/admin/deployments/nope/scale",
            Some(ADMIN_TOKEN),
            &json!({"replicas": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .post(
            "/admin/deployments/idle/rollback",
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_code(), "no_previous_revision");
    let d = app
        .wait_deployment("idle", "serving with none", |d| d["status"] == "serving")
        .await;
    assert_eq!(d["replicas"]["desired"], 0);
    assert_eq!(d["nodes"], json!([]));
    let r = app
        .get("/admin/actions?state=sleeping", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .post(
            "/admin/actions/act-000000000000000000000000/approve",
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "action_not_found");
}

async fn a_pending_launch_is_cancelled_when_its_slot_is_scaled_away_or_the_deployment_deleted(
    backend: Backend,
) {
    let app = app!(backend);
    let mut spec = deployment("gated", 2);
    spec["approval"] = json!({"guarded": ["launch_replica"]});
    app.create_deployment(&spec).await;
    let pending = app
        .wait_actions("gated", "two pending launches", |all| {
            all.len() == 2 && all.iter().all(|a| a["state"] == "pending")
        })
        .await;
    assert!(pending.iter().all(|a| a["risk"] == "guarded"));
    let d = app.get_deployment("gated").await.body;
    assert_eq!(d["pending_actions"], 2);
    assert_eq!(d["nodes"], json!([]), "nothing launched without approval");
    // Scaled to 1: slot 1's launch is cancelled, slot 0's still waits.
    app.scale_deployment("gated", 1).await;
    let all = app
        .wait_actions("gated", "slot 1's launch cancelled", |all| {
            all.iter()
                .any(|a| a["slot"] == 1 && a["state"] == "cancelled")
        })
        .await;
    let slot = |n: i64| all.iter().find(|a| a["slot"] == n).unwrap().clone();
    assert_eq!(slot(1)["reason"], "deployment_removed");
    assert_eq!(slot(0)["state"], "pending");
    // Deleted: the last pending launch is cancelled too, and the deployment goes.
    let r = app
        .delete("/admin/deployments/gated", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id = slot(0)["id"].as_str().unwrap().to_string();
    for _ in 0..300 {
        if app.get_deployment("gated").await.status == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.get_deployment("gated").await.status,
        StatusCode::NOT_FOUND
    );
    let r = app
        .post(
            &format!("/admin/actions/{id}/approve"),
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "the deployment's actions went with it"
    );
}

/// A replica whose model server takes longer to load than the unhealthy grace (1 s here) is
/// waited for, not replaced: while its launch runs, the launch's own timeout judges it.
async fn a_replica_loading_its_model_is_not_replaced(backend: Backend) {
    let app = app!(backend);
    let mut spec = deployment("slow", 1);
    // The echo server listens only after 4 s, as a model server loading its weights.
    spec["envs"] = json!({"ECHO_STARTUP_DELAY_MS": "4000"});
    app.create_deployment(&spec).await;
    wait_serving(&app, "slow", 1).await;
    let all = app
        .wait_actions("slow", "its launch completed", |all| {
            all.iter().any(|a| a["state"] == "completed")
        })
        .await;
    assert_eq!(all.len(), 1, "one launch, no replacement: {all:#?}");
    assert_eq!(all[0]["kind"], "launch_replica");
}

on_both_backends!(
    a_replica_loading_its_model_is_not_replaced,
    a_deployment_is_launched_healed_scaled_and_deleted,
    a_rolling_update_under_load_fails_no_request,
    bad_requests_change_nothing,
    a_pending_launch_is_cancelled_when_its_slot_is_scaled_away_or_the_deployment_deleted,
);
