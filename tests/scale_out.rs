//! Several `skylaunch serve` processes on one PostgreSQL database (the contract's "Scale-out"):
//! real processes built from this workspace, the local PostgreSQL, the real agent and echo
//! model server, and the stand-in `sky` for the launch (no cloud VM can exist here).

mod common;
mod standins;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{Backend, TestDb, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use standins::{agents_of, binaries, fake_sky};

/// One `skylaunch serve` process with its own data dir and port.
struct Serve {
    child: tokio::process::Child,
    base: String,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Serve {
    async fn start(db: &TestDb, extra: &[(&str, &str)]) -> Serve {
        let data = tempfile::tempdir().unwrap();
        let port = standins::free_port();
        let log = data.path().join("serve.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = tokio::process::Command::new(binaries().0);
        cmd.arg("serve")
            .env("SKYLAUNCH_LISTEN", format!("127.0.0.1:{port}"))
            .env("SKYLAUNCH_DATA_DIR", data.path())
            .env("SKYLAUNCH_DATABASE_URL", &db.url)
            .env("SKYLAUNCH_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SKYLAUNCH_HEARTBEAT_INTERVAL", "1s")
            .env("SKYLAUNCH_MISSED_HEARTBEATS", "3")
            .env("SKYLAUNCH_TELEMETRY_FLUSH_INTERVAL", "200ms")
            .env("SKYLAUNCH_JOB_LEASE", "2s")
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let serve = Serve {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _data: data,
        };
        for _ in 0..200 {
            if reqwest::get(format!("{}/healthz", serve.base))
                .await
                .is_ok()
            {
                return serve;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("skylaunch serve did not start:\n{}", serve.output());
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: nothing is flushed, nothing is released.
    async fn sigkill(&mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.expect("request reaches the server");
        let status = res.status();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn agent(&self, path: &str, token: &str, body: &Value) -> (StatusCode, Value) {
        let res = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn chat(&self, model: &str) -> (StatusCode, Value) {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        self.call(reqwest::Method::POST, "/v1/chat/completions", Some(&body))
            .await
    }
}

/// Polls `check` every 50 ms until it holds, for at most `limit`; returns how long it took.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// A real echo model server process on a free port.
fn echo_server(model: &str) -> (tokio::process::Child, String) {
    let port = standins::free_port();
    let child = tokio::process::Command::new(binaries().0)
        .args([
            "echo-server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--model",
            model,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, format!("http://127.0.0.1:{port}"))
}

/// A node created on B, registered and heartbeating on A, serves traffic sent to B; a drain
/// made on A stops B's routing; B's sweeper does not take a node heard only by A for silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_on_one_process_follows_changes_made_on_another() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let a = Serve::start(&db, &[]).await;
    let b = Serve::start(&db, &[]).await;
    let model = "scale/out-model";
    let (_echo, echo_url) = echo_server(model);

    let (status, created) = b
        .call(
            reqwest::Method::POST,
            "/admin/nodes",
            Some(&json!({"name": "shared-node", "model_name": model, "provider": "local"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["node_id"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap().to_string();

    // Registration and heartbeats go to A, which never saw the node created.
    let mut registration = common::registration();
    registration["model_name"] = json!(model);
    registration["endpoint_url"] = json!(echo_url);
    let (status, body) = a
        .agent(
            &format!("/admin/nodes/register?node_id={id}"),
            &token,
            &registration,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", a.output());
    let (status, body) = a
        .agent(
            &format!("/admin/nodes/{id}/heartbeat"),
            &token,
            &common::healthy(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");

    // B routes to it without ever hearing from the agent.
    let took = within(
        Duration::from_secs(10),
        "B routes to the node A made ready",
        || async { b.chat(model).await.0 == StatusCode::OK },
    )
    .await;
    eprintln!("B routed to the node {took:?} after A made it ready");
    let (status, answer) = b.chat(model).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "{answer}"
    );

    // Heartbeats keep going to A only, for longer than the silence that makes a ready node
    // unhealthy (3 s here): B must not take the node for silent.
    let heartbeats = {
        let (base, id, token) = (a.base.clone(), id.clone(), token.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for _ in 0..60 {
                let _ = client
                    .post(format!("{base}/admin/nodes/{id}/heartbeat"))
                    .bearer_auth(&token)
                    .json(&common::healthy())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, node) = b
            .call(reqwest::Method::GET, &format!("/admin/nodes/{id}"), None)
            .await;
        assert_eq!(
            node["status"],
            "ready",
            "B's view of the node: {node:#}\n{}",
            b.output()
        );
        assert_eq!(b.chat(model).await.0, StatusCode::OK);
    }

    // A drain made on A reaches B's routing table.
    let (status, _) = a
        .call(
            reqwest::Method::POST,
            &format!("/admin/nodes/{id}/drain"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let took = within(
        Duration::from_secs(10),
        "B stops routing to the drained node",
        || async { b.chat(model).await.0 == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    eprintln!("B stopped routing {took:?} after the drain on A");
    let (_, refused) = b.chat(model).await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 draining"),
        "{refused}"
    );
    heartbeats.abort();
}

/// Two processes on one database, a SkyPilot launch through the stand-in `sky` (paced so it is
/// still printing) started on A, and A killed with SIGKILL mid-`sky launch`. Agents reach the
/// processes through one shared address (SKYLAUNCH_PUBLIC_URL), which leads to B.
struct Takeover {
    b: Serve,
    a: Serve,
    sky: standins::FakeSky,
    node_id: String,
    job_path: String,
}

impl Takeover {
    async fn start(db: &TestDb, python: &std::path::Path, transcript: &str) -> Takeover {
        let sky = fake_sky(python, transcript, &[("FAKE_SKY_DELAY_S", "0.25")]);
        let sky_bin = sky.bin.display().to_string();
        // The stand-in VMs run on this machine: their model servers are on loopback.
        let loopback = ("SKYLAUNCH_ALLOW_LOOPBACK_ENDPOINTS", "true");
        let b = Serve::start(db, &[("SKYLAUNCH_SKY_BIN", &sky_bin), loopback]).await;
        let a = Serve::start(
            db,
            &[
                ("SKYLAUNCH_SKY_BIN", &sky_bin),
                ("SKYLAUNCH_PUBLIC_URL", &b.base),
                loopback,
            ],
        )
        .await;
        let (status, job) = a
            .call(
                reqwest::Method::POST,
                "/admin/launch-jobs",
                Some(
                    &json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "provider": "skypilot",
                             "gpu": "L4", "use_spot": true, "regions": ["us-east-1"]}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        let id = job["id"].as_str().unwrap().to_string();
        let node_id = job["node_id"].as_str().unwrap().to_string();
        let job_path = format!("/admin/launch-jobs/{id}");
        within(Duration::from_secs(30), "A is provisioning", || async {
            let (_, j) = a.call(reqwest::Method::GET, &job_path, None).await;
            j["stage"] == "provision" && j["attempts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
        Takeover {
            b,
            a,
            sky,
            node_id,
            job_path,
        }
    }

    /// Waits for the job to end on B; says why not if it does not.
    async fn ended_on_b(&self) -> Value {
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_secs(90) {
            let (_, j) = self
                .b
                .call(reqwest::Method::GET, &self.job_path, None)
                .await;
            if common::job_finished(&j) {
                eprintln!(
                    "the launch ended on B {:?} after A was killed",
                    started.elapsed()
                );
                return j;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, j) = self
            .b
            .call(reqwest::Method::GET, &self.job_path, None)
            .await;
        let (_, logs) = self
            .b
            .call(
                reqwest::Method::GET,
                &format!("{}/logs", self.job_path),
                None,
            )
            .await;
        panic!(
            "the launch did not end on B within 90 s: {j:#}\nlog: {logs}\nsky: {:?}\nB:\n{}",
            self.sky.calls(),
            self.b.output()
        );
    }

    async fn logs(&self) -> String {
        let (_, logs) = self
            .b
            .call(
                reqwest::Method::GET,
                &format!("{}/logs?format=json", self.job_path),
                None,
            )
            .await;
        logs.to_string()
    }
}

/// A launch started on A goes on on B after A is killed with SIGKILL: the job is not lost, it
/// ends ready, and one "VM" serves the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_started_on_a_killed_process_finishes_on_another() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let Some(python) = common::sky_python() else {
        return;
    };
    let mut t = Takeover::start(&db, &python, "success-aws-l4-spot.txt").await;
    // A watcher on B sees the launch to its end, first from the database while A runs it,
    // then live once B has taken it over.
    let watcher = {
        let url = format!("{}{}/events", t.b.base, t.job_path);
        tokio::spawn(async move {
            let mut res = reqwest::Client::new()
                .get(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            let mut seen = String::new();
            let until = tokio::time::Instant::now() + Duration::from_secs(120);
            while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, res.chunk()).await {
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
            seen
        })
    };
    t.a.sigkill().await;
    let job = t.ended_on_b().await;
    assert_eq!(job["status"], "succeeded", "{job:#}\nB:\n{}", t.b.output());
    let node_id = t.node_id.clone();
    let (_, node) =
        t.b.call(
            reqwest::Method::GET,
            &format!("/admin/nodes/{node_id}"),
            None,
        )
        .await;
    assert_eq!(node["status"], "ready", "{node:#}");
    let seen = watcher.await.unwrap();
    let last = seen.trim_end().rsplit("\n\n").next().unwrap();
    let final_job: Value =
        serde_json::from_str(last.trim_start_matches("event: job\ndata: ")).unwrap();
    assert_eq!(final_job["status"], "succeeded", "{seen}");
    assert!(
        seen.contains("event: stage"),
        "B's live events after the takeover: {seen}"
    );
    let logs = t.logs().await;
    assert!(logs.contains("this one takes it over"), "{logs}");
    // B took over either before the first attempt's agent registered (it asks SkyPilot about
    // the cluster and follows it) or, on a slow machine, just after (it waits for the
    // registered node to become ready). Either way it goes on with A's VM.
    let followed = logs.contains("waiting for its agent to register instead of launching again");
    assert!(
        followed || logs.contains("the node's agent registered ("),
        "{logs}"
    );

    // One VM: SkyPilot went on with A's launch after A died, B found its cluster with
    // `sky status` and waited for its agent, so there was one `sky launch`, no teardown, and one
    // VM ever started for the cluster.
    let cluster = job["cluster_name"].as_str().unwrap();
    let calls = t.sky.calls();
    let launches: Vec<_> = calls.iter().filter(|c| c[0] == "launch").collect();
    assert_eq!(launches.len(), 1, "{calls:?}");
    assert!(launches[0].contains(&cluster.to_string()), "{calls:?}");
    assert!(
        !followed || calls.iter().any(|c| c[..] == ["status", cluster]),
        "B asked SkyPilot about the cluster: {calls:?}"
    );
    assert!(!calls.iter().any(|c| c[0] == "down"), "{calls:?}");
    assert_eq!(t.sky.vms_started(cluster), 1, "one VM for the cluster");
    assert_eq!(agents_of(&node_id).len(), 1, "one agent serves the node");
    let (status, _) =
        t.b.call(
            reqwest::Method::DELETE,
            &format!("/admin/nodes/{node_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    within(Duration::from_secs(30), "the VM is stopped", || async {
        agents_of(&node_id).is_empty()
    })
    .await;
}

/// B takes over while SkyPilot still runs A's launch, which then fails (the recorded failover
/// that fails on credentials everywhere): B notices the cluster is gone, launches again, and
/// the job ends with SkyPilot's own error instead of waiting out the registration timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_followed_after_a_kill_that_then_fails_is_launched_again_and_explained() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let Some(python) = common::sky_python() else {
        return;
    };
    let mut t = Takeover::start(&db, &python, "14-sim-sky-launch-y-L4-spot.txt").await;
    t.a.sigkill().await;
    let job = t.ended_on_b().await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "credentials_invalid", "{job:#}");
    let logs = t.logs().await;
    assert!(
        logs.contains("waiting for its agent to register instead of launching again"),
        "{logs}"
    );
    assert!(
        logs.contains("the first attempt's launch ended without a machine"),
        "{logs}"
    );
    let cluster = job["cluster_name"].as_str().unwrap();
    let calls = t.sky.calls();
    let launches = calls.iter().filter(|c| c[0] == "launch").count();
    assert_eq!(
        launches, 2,
        "launched again once A's launch had failed: {calls:?}"
    );
    let relaunch = calls.iter().rposition(|c| c[0] == "launch").unwrap();
    assert!(
        calls[..relaunch]
            .iter()
            .any(|c| c[..] == ["down", "-y", cluster]),
        "torn down before launching again: {calls:?}"
    );
    assert_eq!(t.sky.vms_started(cluster), 0, "no VM ever started");
    assert!(agents_of(&t.node_id).is_empty());
}
