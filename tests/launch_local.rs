//! Launch jobs end to end with the local provider: the real runner starts the real echo model
//! server and the real agent as processes on this machine; the node registers and becomes ready.
//! Also: idempotency, validation, cancel, registration timeout, live events, crash recovery.

mod common;
mod standins;

use std::time::Duration;

use common::{Backend, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use standins::{agents_of, binaries};

/// An app whose local launches use the built binaries; `tweak` adjusts the settings.
async fn app_with(
    backend: Backend,
    tweak: impl FnOnce(&mut skylaunch::config::ServeConfig),
) -> Option<TestApp> {
    let db = common::TestDb::new(backend).await?;
    let mut config = common::test_config(&db);
    let (skylaunch, agent) = binaries();
    config.skylaunch_bin = Some(skylaunch);
    config.agent_bin = Some(agent);
    config.job_lease = Duration::from_millis(900);
    tweak(&mut config);
    Some(TestApp::start(db, config).await)
}

macro_rules! app {
    ($backend:expr) => {
        app!($backend, |_| {})
    };
    ($backend:expr, $tweak:expr) => {
        match app_with($backend, $tweak).await {
            Some(app) => app,
            None => return,
        }
    };
}

fn local_launch() -> Value {
    json!({"model": "echo/test-model", "provider": "local"})
}

async fn reachable(url: &str) -> bool {
    reqwest::Client::new()
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok()
}

async fn local_launch_reaches_ready_and_serves(backend: Backend) {
    let app = app!(backend);
    let job = app.launch(&local_launch()).await;
    let id = job["id"].as_str().unwrap();
    let node_id = job["node_id"].as_str().unwrap();
    let job = app.wait_for_job(id, common::job_finished).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let stages: Vec<(&str, &str)> = job["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stages,
        vec![
            ("validate", "done"),
            ("render_task", "done"),
            ("provision", "done"),
            ("instance_up", "done"),
            ("setup", "done"),
            ("start_model_server", "done"),
            ("register", "done"),
            ("ready", "done")
        ]
    );
    assert!(job["stages"][5]["detail"]
        .as_str()
        .unwrap()
        .contains("echo model server"));
    assert_eq!(job["attempts"][0]["cloud"], "local");
    assert_eq!(job["attempts"][0]["outcome"], "succeeded");
    let yaml = job["task_yaml"].as_str().unwrap();
    assert!(
        yaml.contains("SKYLAUNCH_NODE_TOKEN: <secret>"),
        "the token never shows: {yaml}"
    );

    let node = app.node(node_id).await;
    assert_eq!(node["status"], "ready");
    assert_eq!(node["launch_job_id"], id);
    let endpoint = node["endpoint_url"].as_str().unwrap().to_string();
    // The model server wants its own key, which only the load balancer (and the agent) has.
    let chat =
        json!({"model": "echo/test-model", "messages": [{"role": "user", "content": "hi there"}]});
    let direct = reqwest::Client::new()
        .post(format!("{endpoint}/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(
        direct.status(),
        StatusCode::UNAUTHORIZED,
        "no key, no answer"
    );
    let guessed = reqwest::Client::new()
        .post(format!("{endpoint}/v1/chat/completions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(
        guessed.status(),
        StatusCode::UNAUTHORIZED,
        "not the admin token either"
    );
    let answer: Value = reqwest::Client::new()
        .post(app.url("/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: hi there");
    assert!(
        !app.node(node_id).await.to_string().contains("Bearer"),
        "the key is never shown"
    );

    let logs = app.job_log_text(id).await;
    assert!(
        logs.contains("[agent]") && logs.contains("registered with the control plane"),
        "{logs}"
    );

    // Deleting the node stops what the launch started.
    let r = app.delete_node(node_id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for _ in 0..100 {
        if !reachable(&endpoint).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the model server still answers after its node was deleted");
}

async fn same_idempotency_key_returns_the_first_job(backend: Backend) {
    let app = app!(backend, |c| c.public_url =
        Some("http://127.0.0.1:9".into()));
    let send = |body: Value| {
        app.send(
            app.client
                .post(app.url("/admin/launch-jobs"))
                .bearer_auth(ADMIN_TOKEN)
                .header("Idempotency-Key", "abc-123")
                .json(&body),
        )
    };
    let first = send(local_launch()).await;
    let second = send(local_launch()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_eq!(first.body["id"], second.body["id"]);
    // The same key for another launch is a mistake: refused, nothing made.
    let other = send(json!({"model": "echo/another-model", "provider": "local"})).await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.body);
    assert_eq!(other.error_code(), "idempotency_key_reused");
    assert!(
        other.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(first.body["id"].as_str().unwrap()),
        "{}",
        other.body
    );
    assert_eq!(
        app.get("/admin/launch-jobs", Some(ADMIN_TOKEN)).await.body["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        app.get("/admin/nodes", Some(ADMIN_TOKEN)).await.body["nodes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let id = first.body["id"].as_str().unwrap();
    app.cancel(id).await;
    app.wait_for_job(id, common::job_finished).await;
}

async fn invalid_launch_is_422_with_suggestions_and_queues_nothing(backend: Backend) {
    let app = app!(backend);
    let r = app
        .post("/admin/launch-jobs", Some(ADMIN_TOKEN), &json!({"model": "m/x", "provider": "skypilot", "gpu": "H10", "regions": ["us-east-1"]}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_code(), "invalid_accelerator");
    assert!(
        r.body["error"]["suggestions"]
            .as_array()
            .unwrap()
            .contains(&json!("H100")),
        "{}",
        r.body
    );
    let r = app
        .post(
            "/admin/launch-jobs",
            Some(ADMIN_TOKEN),
            &json!({"model": "m/x", "provider": "skypilot", "gpu": "L4", "regions": ["us-east-9"]}),
        )
        .await;
    assert_eq!(r.error_code(), "invalid_region");
    assert!(r.body["error"]["suggestions"]
        .as_array()
        .unwrap()
        .contains(&json!("us-east-1")));
    assert_eq!(
        app.get("/admin/launch-jobs", Some(ADMIN_TOKEN)).await.body["jobs"],
        json!([])
    );
    assert_eq!(
        app.get("/admin/nodes", Some(ADMIN_TOKEN)).await.body["nodes"],
        json!([])
    );
}

/// The agent is pointed at an address where no control plane listens, so it never registers.
async fn cancel_tears_down_a_running_launch(backend: Backend) {
    let app = app!(backend, |c| c.public_url =
        Some("http://127.0.0.1:9".into()));
    let job = app.launch(&local_launch()).await;
    let id = job["id"].as_str().unwrap();
    let running = app.wait_for_job(id, |j| j["stage"] == "register").await;
    assert_eq!(running["status"], "running");
    let r = app.cancel(id).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = app.wait_for_job(id, common::job_finished).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["error"]["code"], "cancelled");
    assert_eq!(
        app.node(job["node_id"].as_str().unwrap()).await["status"],
        "terminated"
    );
    let logs = app
        .get(
            &format!("/admin/launch-jobs/{id}/logs?format=json"),
            Some(ADMIN_TOKEN),
        )
        .await
        .body;
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("tearing down")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("model_server exited")),
        "the echo server was stopped: {lines:?}"
    );
    let r = app.cancel(id).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

async fn agent_that_never_registers_fails_with_registration_timeout(backend: Backend) {
    let app = app!(backend, |c| {
        c.public_url = Some("http://127.0.0.1:9".into());
        c.registration_timeout = Duration::from_secs(1);
    });
    let job = app.launch(&local_launch()).await;
    let job = app
        .wait_for_job(job["id"].as_str().unwrap(), common::job_finished)
        .await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "registration_timeout");
    assert!(!job["error"]["suggestions"].as_array().unwrap().is_empty());
    let register = job["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "register")
        .unwrap()
        .clone();
    assert_eq!(register["state"], "failed");
    assert_eq!(
        app.node(job["node_id"].as_str().unwrap()).await["status"],
        "terminated"
    );
}

async fn events_stream_stages_and_ends_with_the_final_job(backend: Backend) {
    let app = app!(backend);
    let job = app.launch(&local_launch()).await;
    let id = job["id"].as_str().unwrap();
    let mut res = app
        .client
        .get(app.url(&format!("/admin/launch-jobs/{id}/events")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, res.chunk())
        .await
        .expect("stream ends in time")
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: job\n"), "{text}");
    assert!(text.contains("event: stage\n"), "{text}");
    assert!(text.contains("event: attempt\n"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: job\ndata: "), "{last}");
    let final_job: Value =
        serde_json::from_str(last.trim_start_matches("event: job\ndata: ")).unwrap();
    assert_eq!(final_job["status"], "succeeded");
    app.delete(
        &format!("/admin/nodes/{}", final_job["node_id"].as_str().unwrap()),
        Some(ADMIN_TOKEN),
    )
    .await;
}

async fn launch_interrupted_by_a_crash_is_taken_over_on_restart(backend: Backend) {
    // The first process's public URL leads nowhere, so its agent cannot register: the crash
    // comes while the launch waits for it.
    let app = app!(backend, |c| {
        c.public_url = Some("http://127.0.0.1:9".into());
        c.job_lease = Duration::from_secs(2);
    });
    let job = app.launch(&local_launch()).await;
    let id = job["id"].as_str().unwrap().to_string();
    let node_id = job["node_id"].as_str().unwrap().to_string();
    app.wait_for_job(&id, |j| j["stage"] == "register").await;
    let first_agents = agents_of(&node_id);
    assert_eq!(first_agents.len(), 1, "the first attempt's agent runs");
    let app = app.crash_and_restart_with(|c| c.public_url = None).await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let logs = app.job_logs(&id).await;
    assert!(logs.contains("this one takes it over"), "{logs}");
    assert!(
        logs.contains("removing whatever it started, then launching again"),
        "{logs}"
    );
    assert_eq!(app.node(&node_id).await["status"], "ready");
    // One machine: the first attempt's agent is gone, one agent serves the node.
    let agents = agents_of(&node_id);
    assert_eq!(agents.len(), 1, "exactly one agent: {agents:?}");
    assert!(
        !agents.contains(&first_agents[0]),
        "the first agent was stopped"
    );
    app.delete_node(&node_id).await;
}

/// A graceful stop hands its launches back: with a ten-minute lease, only that lets the next
/// start take the launch over and finish it.
async fn launch_stopped_by_a_graceful_shutdown_is_handed_back(backend: Backend) {
    let app = app!(backend, |c| {
        c.public_url = Some("http://127.0.0.1:9".into());
        c.job_lease = Duration::from_secs(600);
    });
    let job = app.launch(&local_launch()).await;
    let id = job["id"].as_str().unwrap().to_string();
    let node_id = job["node_id"].as_str().unwrap().to_string();
    app.wait_for_job(&id, |j| j["stage"] == "register").await;
    let app = app.restart_with(|c| c.public_url = None).await;
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let logs = app.job_logs(&id).await;
    assert!(logs.contains("this one takes it over"), "{logs}");
    assert_eq!(agents_of(&node_id).len(), 1, "one agent serves the node");
    app.delete_node(&node_id).await;
}

on_both_backends!(
    launch_stopped_by_a_graceful_shutdown_is_handed_back,
    local_launch_reaches_ready_and_serves,
    same_idempotency_key_returns_the_first_job,
    invalid_launch_is_422_with_suggestions_and_queues_nothing,
    cancel_tears_down_a_running_launch,
    agent_that_never_registers_fails_with_registration_timeout,
    events_stream_stages_and_ends_with_the_final_job,
    launch_interrupted_by_a_crash_is_taken_over_on_restart,
);

/// A recorded process group id that now belongs to another process (ids are reused, after a
/// reboot say) is left alone by teardown; the launch's own groups are stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_stops_only_the_process_groups_the_launch_started() {
    use std::os::unix::process::CommandExt;
    let app = app!(Backend::Sqlite);
    let job = app.launch(&local_launch()).await;
    let id = job["id"].as_str().unwrap().to_string();
    let node_id = job["node_id"].as_str().unwrap().to_string();
    let job = app.wait_for_job(&id, common::job_finished).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let endpoint = app.node(&node_id).await["endpoint_url"]
        .as_str()
        .unwrap()
        .to_string();
    // A stranger in a process group of its own, its id recorded as if the launch had started it.
    let mut stranger = std::process::Command::new("sleep")
        .arg("120")
        .process_group(0)
        .spawn()
        .unwrap();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&app.db.url)
        .await
        .unwrap();
    let state: String = sqlx::query_scalar("SELECT provider_state FROM launch_jobs WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut state: Value = serde_json::from_str(&state).unwrap();
    state["process_groups"]
        .as_array_mut()
        .unwrap()
        .push(stranger.id().into());
    sqlx::query("UPDATE launch_jobs SET provider_state = $1 WHERE id = $2")
        .bind(state.to_string())
        .bind(&id)
        .execute(&mut conn)
        .await
        .unwrap();

    let r = app.delete_node(&node_id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut stopped = false;
    for _ in 0..100 {
        if !reachable(&endpoint).await {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stopped, "the launch's own model server was stopped");
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger's group was left alone"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}
