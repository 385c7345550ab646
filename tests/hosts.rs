//! SSH hosts and `provider: "ssh"` against real OpenSSH servers on 127.0.0.1 (`tests/common/
//! sshd.rs`), each standing in for a GPU machine the operator owns: hosts added with a key or
//! a password and probed, a wrong key and a changed host key refused, a launch that starts the
//! real agent and the echo model server over SSH, serves `/v1` and leaves no process and no
//! file behind, a deployment whose dead replica is replaced on a free host, and credentials that
//! appear in no answer, event or log line (at debug level).

mod common;
mod standins;

use std::time::Duration;

use common::{Backend, Sshd, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use skylaunch::ssh::{SshAuth, SshSettings, SshTarget};
use standins::binaries;

async fn app() -> Option<TestApp> {
    let db = common::TestDb::new(Backend::Sqlite).await?;
    let mut config = common::test_config(&db);
    let (skylaunch, agent) = binaries();
    config.skylaunch_bin = Some(skylaunch);
    config.agent_bin = Some(agent);
    // The "hosts" are this machine: their model servers are on loopback.
    config.allow_loopback_endpoints = true;
    Some(TestApp::start(db, config).await)
}

fn key_host(name: &str, sshd: &Sshd) -> Value {
    json!({
        "name": name, "address": "127.0.0.1", "port": sshd.port, "user": sshd.user,
        "auth": {"private_key": sshd.client_key}, "labels": {"rack": "a"},
    })
}

/// Polls a host (up to about 60 s) until `done` holds; returns it.
async fn wait_host(app: &TestApp, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        last = app
            .get(&format!("/admin/hosts/{id}"), Some(ADMIN_TOKEN))
            .await
            .body;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("host never became {what}: {last:#}");
}

async fn add_host(app: &TestApp, body: &Value) -> Value {
    let r = app.post("/admin/hosts", Some(ADMIN_TOKEN), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    wait_host(app, &id, "probed", |h| {
        h["status"] != "probing" && h["status"] != "pending"
    })
    .await
}

/// The launch's files on the host, as its user sees them.
async fn remote_ls(sshd: &Sshd, path: &str) -> String {
    let target = SshTarget {
        address: "127.0.0.1".into(),
        port: sshd.port,
        user: sshd.user.clone(),
        auth: SshAuth::PrivateKey(sshd.client_key.clone()),
        host_key: Some(sshd.host_key.clone()),
    };
    let out = target
        .run(
            &SshSettings::default(),
            &format!("ls -la {path} 2>&1; stat -c '%a %n' {path}/node.env 2>&1"),
            None,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    out.stdout
}

fn launch_processes(job_id: &str) -> Vec<u32> {
    standins::processes_with_env("SKYLAUNCH_HOST_JOB", job_id)
}

/// The launch's agent processes on the host.
fn agents_of_launch(job_id: &str) -> Vec<u32> {
    launch_processes(job_id)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("skylaunch-agent"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_probed_with_a_key_or_a_password_and_bad_logins_are_refused() {
    let Some(sshd) = Sshd::start() else { return };
    let Some(app) = app().await else { return };
    let host = add_host(&app, &key_host("gpu-a", &sshd)).await;
    assert_eq!(host["status"], "available", "{host:#}");
    assert_eq!(host["auth"], "private_key");
    let fingerprint = host["host_key_fingerprint"].as_str().unwrap();
    assert_eq!(
        fingerprint,
        skylaunch::ssh::fingerprint(&sshd.host_key).await.unwrap(),
        "trust on first use recorded the key the server really has"
    );
    let probe = &host["probe"];
    assert!(!probe["os"].as_str().unwrap().is_empty(), "{probe}");
    assert_eq!(probe["systemd"], false, "no systemd in this container");
    assert!(probe["disk_free_gb"].as_f64().unwrap() > 0.0);
    assert!(probe["gpus"].as_array().unwrap().is_empty(), "no GPU here");
    let kinds: Vec<&str> = host["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["added", "probing", "host_key_learnt", "probed"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }

    // A password login, with the host key given.
    let mut by_password = key_host("gpu-b", &sshd);
    by_password["auth"] = json!({"password": sshd.password});
    by_password["host_key"] = json!(sshd.host_key);
    let host = add_host(&app, &by_password).await;
    assert_eq!(host["status"], "available", "{host:#}");
    assert_eq!(host["auth"], "password");

    // A key the server does not know: an error with the plain reason.
    let (stranger, _) = common::sshd::keygen_in_tempdir();
    let mut wrong = key_host("gpu-c", &sshd);
    wrong["auth"] = json!({"private_key": stranger});
    let host = add_host(&app, &wrong).await;
    assert_eq!(host["status"], "error", "{host:#}");
    assert!(
        host["reason"]
            .as_str()
            .unwrap()
            .contains("refused the login"),
        "{host:#}"
    );

    // A host key other than the server's: refused, with an event saying so.
    let (_, other_public) = common::sshd::keygen_in_tempdir();
    let mut spoofed = key_host("gpu-d", &sshd);
    spoofed["host_key"] = json!(other_public);
    let host = add_host(&app, &spoofed).await;
    assert_eq!(host["status"], "error", "{host:#}");
    assert!(
        host["reason"]
            .as_str()
            .unwrap()
            .contains("different host key"),
        "{host:#}"
    );
    assert!(
        host["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "host_key_mismatch"),
        "{host:#}"
    );

    // Bad input changes nothing.
    let before = app.get("/admin/hosts", Some(ADMIN_TOKEN)).await.body;
    for (body, field) in [
        (
            json!({"name": "x", "address": "h", "user": "u", "auth": {"password": ""}}),
            "auth.password",
        ),
        (
            json!({"name": "x y", "address": "h", "user": "u", "auth": {"password": "p"}}),
            "name",
        ),
        (
            json!({"name": "x", "address": "-oProxyCommand=id", "user": "u", "auth": {"password": "p"}}),
            "address",
        ),
        (
            json!({"name": "x", "address": "h", "user": "u", "auth": {"private_key": "nope"}}),
            "auth.private_key",
        ),
        (
            json!({"name": "x", "address": "h", "user": "u", "auth": {"password": "p"}, "gpu_type": "L5"}),
            "gpu_type",
        ),
    ] {
        let r = app.post("/admin/hosts", Some(ADMIN_TOKEN), &body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        assert_eq!(r.body["error"]["field"], field, "{}", r.body);
    }
    let r = app
        .post("/admin/hosts", Some(ADMIN_TOKEN), &key_host("gpu-a", &sshd))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(
        app.get("/admin/hosts", Some(ADMIN_TOKEN)).await.body,
        before
    );

    // Credentials never come back, from any endpoint.
    let mut seen = before.to_string();
    for h in before["hosts"].as_array().unwrap() {
        let id = h["id"].as_str().unwrap();
        seen.push_str(
            &app.get(&format!("/admin/hosts/{id}"), Some(ADMIN_TOKEN))
                .await
                .body
                .to_string(),
        );
    }
    seen.push_str(&app.metrics().await);
    let key_body = sshd.client_key.lines().nth(1).unwrap();
    assert!(!seen.contains(key_body), "the private key leaked");
    assert!(!seen.contains(&sshd.password), "the password leaked");

    // Probing again works; deleting a free host works.
    let id = before["hosts"][0]["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/admin/hosts/{id}/probe"),
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    wait_host(&app, id, "probed again", |h| h["status"] == "available").await;
    assert_eq!(
        app.delete(&format!("/admin/hosts/{id}"), Some(ADMIN_TOKEN))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/admin/hosts/{id}"), Some(ADMIN_TOKEN))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_launch_serves_v1_and_its_teardown_leaves_no_process_and_no_file() {
    let Some(sshd) = Sshd::start() else { return };
    let Some(app) = app().await else { return };
    let host = add_host(&app, &key_host("gpu-a", &sshd)).await;
    let host_id = host["id"].as_str().unwrap().to_string();

    // No host fits an H100: capacity_unavailable naming what is missing.
    let job = app
        .launch(&json!({"model": "echo/ssh", "provider": "ssh", "template": "echo", "gpu": "H100"}))
        .await;
    let failed = app
        .wait_for_job(job["id"].as_str().unwrap(), common::job_finished)
        .await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(
        failed["error"]["code"], "capacity_unavailable",
        "{failed:#}"
    );
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpu-a has no GPU, not H100"),
        "{failed:#}"
    );

    let job = app
        .launch(&json!({"model": "echo/ssh", "provider": "ssh", "template": "echo", "labels": {"rack": "a"}}))
        .await;
    let job_id = job["id"].as_str().unwrap().to_string();
    let done = app.wait_for_job(&job_id, common::job_finished).await;
    assert_eq!(
        done["status"],
        "succeeded",
        "{done:#}\n{}",
        app.job_logs(&job_id).await
    );
    let stages: Vec<&str> = done["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for stage in [
        "provision",
        "instance_up",
        "setup",
        "start_model_server",
        "register",
        "ready",
    ] {
        assert!(stages.contains(&stage), "{stage} in {stages:?}");
    }
    let logs = app.job_logs(&job_id).await;
    assert!(logs.contains("running the template's setup"), "{logs}");
    let host = wait_host(&app, &host_id, "in use", |h| h["status"] == "in_use").await;
    assert_eq!(host["job_id"], job_id.as_str());
    assert!(
        !launch_processes(&job_id).is_empty(),
        "the agent and model server run"
    );
    let dir = format!(".skylaunch/{}", done["cluster_name"].as_str().unwrap());
    let files = remote_ls(&sshd, &dir).await;
    assert!(
        files.contains("600 ") && files.contains("node.env"),
        "the env file is private: {files}"
    );

    // It serves /v1 through the load balancer.
    let answer: Value = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "echo/ssh", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"], "echo: hi",
        "{answer}"
    );

    // A host in use cannot be removed.
    let r = app
        .delete(&format!("/admin/hosts/{host_id}"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "host_in_use");

    // Deleting the node tears down: no process, no file; the host is free again.
    let node_id = done["node_id"].as_str().unwrap();
    app.delete_node(node_id).await;
    app.wait_for_status(node_id, "terminated").await;
    wait_host(&app, &host_id, "available again", |h| {
        h["status"] == "available"
    })
    .await;
    assert!(
        launch_processes(&job_id).is_empty(),
        "no process of the launch is left"
    );
    let files = remote_ls(&sshd, &dir).await;
    assert!(
        files.contains("No such file"),
        "no file of the launch is left: {files}"
    );
}

/// A template setup that fails on the host: `setup_failed` with the failing command's last
/// lines, the whole output in the job log, and the host cleaned and free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_setup_is_setup_failed_with_its_last_lines_and_frees_the_host() {
    let Some(sshd) = Sshd::start() else { return };
    let db = match common::TestDb::new(Backend::Sqlite).await {
        Some(db) => db,
        None => return,
    };
    let mut config = common::test_config(&db);
    let (_, agent) = binaries();
    config.agent_bin = Some(agent);
    // Not an executable: the echo template's setup runs `skylaunch --version`, which fails.
    let broken = db.data_dir.path().join("not-skylaunch");
    std::fs::write(&broken, "this is not a program (\n").unwrap();
    config.skylaunch_bin = Some(broken);
    config.allow_loopback_endpoints = true;
    let app = TestApp::start(db, config).await;
    let host = add_host(&app, &key_host("broken", &sshd)).await;
    let host_id = host["id"].as_str().unwrap().to_string();
    let job = app
        .launch(&json!({"model": "echo/broken", "provider": "ssh", "template": "echo"}))
        .await;
    let job_id = job["id"].as_str().unwrap().to_string();
    let failed = app.wait_for_job(&job_id, common::job_finished).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["code"], "setup_failed", "{failed:#}");
    let raw = failed["error"]["raw"].as_str().unwrap();
    assert!(
        raw.contains("bin/skylaunch: line 1: syntax error"),
        "the failing command's last lines: {failed:#}"
    );
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the template's setup exited"),
        "{failed:#}"
    );
    let logs = app.job_logs(&job_id).await;
    assert!(logs.contains("running the template's setup"), "{logs}");
    wait_host(&app, &host_id, "available again", |h| {
        h["status"] == "available"
    })
    .await;
    assert!(launch_processes(&job_id).is_empty());
    let dir = format!(".skylaunch/{}", failed["cluster_name"].as_str().unwrap());
    assert!(remote_ls(&sshd, &dir).await.contains("No such file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_unreachable_at_teardown_waits_in_teardown_pending_and_is_retried() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let Some(app) = app().await else { return };
    let host = add_host(&app, &key_host("flaky", &sshd)).await;
    let host_id = host["id"].as_str().unwrap().to_string();
    let job = app
        .launch(&json!({"model": "echo/flaky", "provider": "ssh", "template": "echo"}))
        .await;
    let job_id = job["id"].as_str().unwrap().to_string();
    let done = app.wait_for_job(&job_id, common::job_finished).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let node_id = done["node_id"].as_str().unwrap();

    // The host stops answering SSH; deleting the node cannot remove anything from it.
    sshd.stop();
    app.delete_node(node_id).await;
    app.wait_for_status(node_id, "teardown_pending").await;
    let held = wait_host(&app, &host_id, "teardown_pending", |h| {
        h["status"] == "teardown_pending"
    })
    .await;
    assert_eq!(
        held["job_id"],
        job_id.as_str(),
        "still held by the launch: {held:#}"
    );
    assert!(
        held["reason"]
            .as_str()
            .unwrap()
            .contains("could not reach the host"),
        "{held:#}"
    );
    assert!(
        !launch_processes(&job_id).is_empty(),
        "nothing was stopped on the host"
    );
    let r = app
        .delete(&format!("/admin/hosts/{host_id}"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "a host awaiting teardown stays: {}",
        r.body
    );

    // It comes back: the retried teardown removes everything and frees the host.
    sshd.resume();
    app.wait_for_status(node_id, "terminated").await;
    let freed = wait_host(&app, &host_id, "available", |h| h["status"] == "available").await;
    assert!(freed["job_id"].is_null(), "{freed:#}");
    assert!(
        launch_processes(&job_id).is_empty(),
        "no process of the launch is left"
    );
}

/// A control plane that dies while a launch's agent has not registered yet: the process that
/// takes the job over finds the launch's processes running on the host and waits for them
/// instead of provisioning the host a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_reattaches_to_a_launch_already_running_on_its_host() {
    let Some(sshd) = Sshd::start() else { return };
    let db = match common::TestDb::new(Backend::Sqlite).await {
        Some(db) => db,
        None => return,
    };
    let mut config = common::test_config(&db);
    let (skylaunch, agent) = binaries();
    config.skylaunch_bin = Some(skylaunch);
    config.agent_bin = Some(agent);
    config.allow_loopback_endpoints = true;
    config.job_lease = Duration::from_millis(900);
    // The agent is told a control plane address where nobody listens yet: it cannot register
    // before the crash. The restarted control plane listens there.
    let later = standins::free_port();
    config.public_url = Some(format!("http://127.0.0.1:{later}"));
    let app = TestApp::start(db, config).await;
    add_host(&app, &key_host("reattach", &sshd)).await;
    let job = app
        .launch(&json!({"model": "echo/reattach", "provider": "ssh", "template": "echo"}))
        .await;
    let job_id = job["id"].as_str().unwrap().to_string();
    app.wait_for_job(&job_id, |j| j["stage"] == "register")
        .await;
    let mut started = Vec::new();
    for _ in 0..200 {
        started = agents_of_launch(&job_id);
        if !started.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(started.len(), 1, "the launch's agent runs: {started:?}");

    let app = app
        .crash_and_restart_with(|c| c.listen = format!("127.0.0.1:{later}").parse().unwrap())
        .await;
    let done = app.wait_for_job(&job_id, common::job_finished).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let logs = app.job_logs(&job_id).await;
    assert_eq!(
        logs.matches("copying skylaunch-agent").count(),
        1,
        "the host was provisioned once: {logs}"
    );
    assert_eq!(
        agents_of_launch(&job_id),
        started,
        "the same agent serves, none was added"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_on_a_pool_of_hosts_replaces_a_dead_replica_on_a_free_host() {
    let (Some(a), Some(b), Some(c)) = (Sshd::start(), Sshd::start(), Sshd::start()) else {
        return;
    };
    let Some(app) = app().await else { return };
    for (name, sshd) in [("pool-a", &a), ("pool-b", &b)] {
        assert_eq!(
            add_host(&app, &key_host(name, sshd)).await["status"],
            "available"
        );
    }
    app.create_deployment(&json!({
        "name": "owned", "model": "echo/owned", "provider": "ssh", "template": "echo",
        "labels": {"rack": "a"}, "replicas": 2,
    }))
    .await;
    let d = app
        .wait_deployment("owned", "2 ready replicas", |d| d["replicas"]["ready"] == 2)
        .await;
    let victim = d["nodes"][0].clone();
    let victim_job = victim["launch_job_id"].as_str().unwrap().to_string();
    let victim_id = victim["node_id"].as_str().unwrap().to_string();

    // A third host joins the pool; then one replica's processes die.
    assert_eq!(
        add_host(&app, &key_host("pool-c", &c)).await["status"],
        "available"
    );
    let pids = launch_processes(&victim_job);
    assert!(pids.len() >= 2, "agent and model server: {pids:?}");
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let healed = app
        .wait_deployment("owned", "its dead replica replaced", |d| {
            d["replicas"]["ready"] == 2
                && !d["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["node_id"] == victim_id.as_str())
        })
        .await;
    assert_eq!(healed["nodes"].as_array().unwrap().len(), 2, "{healed:#}");
    let hosts = app.get("/admin/hosts", Some(ADMIN_TOKEN)).await.body;
    let pool_c = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "pool-c")
        .unwrap();
    assert_eq!(
        pool_c["status"], "in_use",
        "the replacement went to the free host: {hosts:#}"
    );
    // The dead replica's host is given back once its node is terminated.
    app.wait_for_status(&victim_id, "terminated").await;
    let mut freed = false;
    for _ in 0..300 {
        let hosts = app.get("/admin/hosts", Some(ADMIN_TOKEN)).await.body;
        if hosts["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["status"] == "available")
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the dead replica's host is available again");

    // Deleting the deployment frees every host.
    app.delete("/admin/deployments/owned", Some(ADMIN_TOKEN))
        .await;
    for _ in 0..600 {
        let hosts = app.get("/admin/hosts", Some(ADMIN_TOKEN)).await.body;
        if hosts["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["status"] == "available")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the hosts were not all given back");
}

/// The real binary at `RUST_LOG=debug`: a host added by password and one by key, a launch on
/// it and its teardown; neither credential appears in the process's output, any answer, any
/// event or `/metrics`, nor in the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_appear_in_no_answer_event_log_line_or_database_row() {
    let Some(sshd) = Sshd::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let server = standins::DebugServer::start(data.path(), &[]).await;
    let mut seen = String::new();
    let mut ids = Vec::new();
    let mut by_password = key_host("leak-pw", &sshd);
    by_password["auth"] = json!({"password": sshd.password});
    for body in [key_host("leak-key", &sshd), by_password] {
        let r = server
            .call(reqwest::Method::POST, "/admin/hosts")
            .json(&body)
            .send();
        let text = r.await.unwrap().text().await.unwrap();
        seen.push_str(&text);
        let host: Value = serde_json::from_str(&text).unwrap();
        ids.push(host["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        server
            .wait(&format!("/admin/hosts/{id}"), |h| {
                h["status"] == "available"
            })
            .await;
    }
    // Two launches, one per host (each host takes one launch), then their teardowns.
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let body = json!({"model": "echo/leak", "provider": "ssh", "template": "echo"});
        let r = server
            .call(reqwest::Method::POST, "/admin/launch-jobs")
            .json(&body)
            .send();
        let job: Value = r.await.unwrap().json().await.unwrap();
        jobs.push(job["id"].as_str().unwrap().to_string());
    }
    for id in &jobs {
        let job = server
            .wait(&format!("/admin/launch-jobs/{id}"), common::job_finished)
            .await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        seen.push_str(&job.to_string());
        seen.push_str(&server.text(&format!("/admin/launch-jobs/{id}/logs")).await);
        let node = job["node_id"].as_str().unwrap();
        seen.push_str(&server.text(&format!("/admin/nodes/{node}")).await);
        let r = server.call(reqwest::Method::DELETE, &format!("/admin/nodes/{node}"));
        r.send().await.unwrap();
    }
    for id in &ids {
        let host = server
            .wait(&format!("/admin/hosts/{id}"), |h| {
                h["status"] == "available"
            })
            .await;
        seen.push_str(&host.to_string());
    }
    seen.push_str(&server.text("/admin/hosts").await);
    seen.push_str(&server.text("/metrics").await);
    let logged = server.stop().await;
    assert!(
        logged.contains("host added"),
        "the log is the server's: {logged}"
    );
    seen.push_str(&logged);
    let mut database = Vec::new();
    for entry in std::fs::read_dir(data.path()).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("skylaunch.db")
        {
            database.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    assert!(
        !database.is_empty(),
        "the SQLite database is in the data dir"
    );
    let key_body = sshd.client_key.lines().nth(1).unwrap();
    for (what, secret) in [
        ("private key", key_body),
        ("password", sshd.password.as_str()),
    ] {
        assert!(
            !seen.contains(secret),
            "the {what} appeared in an answer or a log line"
        );
        assert!(
            !database
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "the {what} is stored in clear in the database"
        );
    }
}
