//! Several `skylaunch serve` processes on one PostgreSQL database (see "Several processes on one
//! PostgreSQL" in docs/operations.md): real processes built from this workspace, the local
//! PostgreSQL, the real agent and echo model server, and the stand-in `sky` for the launch (no
//! cloud VM can exist here). The lease fencing tests at the end also run two processes' stores and
//! job runners inside this one, to choose the moment a process is cut off.

mod common;
mod standins;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use skylaunch::clock::now_ms;
use skylaunch::config::ServeConfig;
use skylaunch::fleet::node::NewNode;
use skylaunch::fleet::status::NodeStatus;
use skylaunch::fleet::Fleet;
use skylaunch::launch::events::JobEvents;
use skylaunch::launch::failure::LaunchError;
use skylaunch::launch::job::{Job, JobStatus};
use skylaunch::launch::providers::{BoxFuture, LaunchProvider, Provider, Providers};
use skylaunch::launch::run::JobRun;
use skylaunch::launch::runner::{JobRunner, RunnerSettings};
use skylaunch::launch::spec::LaunchRequest;
use skylaunch::metrics::Metrics;
use skylaunch::store::{Store, StoreError};
use standins::{agents_of, binaries, fake_sky};
use tokio::sync::{watch, Notify};

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

    /// `kill -STOP` / `kill -CONT`: the process is frozen (as if cut off from everything: no
    /// lease renewal, no write) until resumed, and then goes on where it was.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process runs").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
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

/// Two processes on one database, and a SkyPilot launch through the stand-in `sky` (paced so it
/// is still printing) started on A, which a test then kills or freezes mid-`sky launch`. Agents
/// reach the processes through one shared address (SKYLAUNCH_PUBLIC_URL), which leads to B.
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
                    "the launch ended on B {:?} after A stopped",
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

/// A is frozen mid-`sky launch` for longer than its lease (cut off, as far as the database can
/// tell), B takes the launch over and follows A's launch, then A resumes: what A read from its
/// `sky launch` meanwhile is refused, A stops without tearing anything down, and the launch ends
/// ready on B with one VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_frozen_past_its_lease_stops_writing_once_resumed_and_tears_nothing_down() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let Some(python) = common::sky_python() else {
        return;
    };
    let t = Takeover::start(&db, &python, "success-aws-l4-spot.txt").await;
    t.a.signal("-STOP");
    within(
        Duration::from_secs(30),
        "B takes over the launch of frozen A",
        || async { t.logs().await.contains("this one takes it over") },
    )
    .await;
    t.a.signal("-CONT");
    within(
        Duration::from_secs(30),
        "A, resumed, finds the job is B's",
        || async {
            t.a.output()
                .contains("this process no longer holds the job's lease")
        },
    )
    .await;
    let job = t.ended_on_b().await;
    assert_eq!(job["status"], "succeeded", "{job:#}\nA:\n{}", t.a.output());

    // Only A read its `sky launch` output; B followed the launch through `sky status`. So no
    // such line after B's takeover: A's writes after it were refused.
    let logs: Value = serde_json::from_str(&t.logs().await).unwrap();
    let lines = logs["lines"].as_array().unwrap();
    let takeover = lines
        .iter()
        .position(|l| {
            l["line"]
                .as_str()
                .unwrap()
                .contains("this one takes it over")
        })
        .unwrap();
    let after: Vec<_> = lines[takeover..]
        .iter()
        .filter(|l| l["stream"] == "stdout" || l["stream"] == "stderr")
        .collect();
    assert!(after.is_empty(), "A wrote after the takeover: {after:#?}");
    assert!(!t.a.output().contains("tearing down"), "{}", t.a.output());
    let cluster = job["cluster_name"].as_str().unwrap();
    let calls = t.sky.calls();
    assert!(!calls.iter().any(|c| c[0] == "down"), "{calls:?}");
    assert_eq!(t.sky.vms_started(cluster), 1, "one VM for the cluster");
    assert_eq!(agents_of(&t.node_id).len(), 1, "one agent serves the node");
}

/// A queued launch job of the local provider, not yet stored.
fn local_job(name: &str, node_id: Option<String>) -> Job {
    let spec =
        serde_json::from_value::<LaunchRequest>(json!({"model": "demo/echo", "provider": "local"}))
            .unwrap()
            .validate(name)
            .unwrap();
    Job::queued(uuid::Uuid::new_v4().to_string(), spec, node_id, now_ms())
}

/// What the database shows of a process cut off from it longer than its lease: the lease has
/// lapsed, and any process may claim the job.
async fn lapse_lease(store: &Store, job_id: &str) {
    sqlx::query("UPDATE launch_jobs SET lease_expires_at = 0 WHERE id = $1")
        .bind(job_id)
        .execute(store.pool())
        .await
        .unwrap();
}

async fn lease_owner(store: &Store, job_id: &str) -> String {
    sqlx::query_scalar("SELECT lease_owner FROM launch_jobs WHERE id = $1")
        .bind(job_id)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

fn in_a_minute() -> i64 {
    now_ms() + 60_000
}

/// Two processes' stores on one database: A claims a job and is cut off past its lease, B takes
/// the job over. When A comes back, each of its writes (progress, outcome, log lines, lease
/// renewal) is refused with `LeaseLost` and changes nothing; B's state stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_a_process_whose_job_was_taken_over_are_refused() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let a = Store::connect(&db.url).await.unwrap();
    let b = Store::connect(&db.url).await.unwrap();
    let job = local_job("fenced", None);
    a.insert_job(&job, "{}", None).await.unwrap();
    let on_a = a
        .claim_job("process-a", in_a_minute(), now_ms())
        .await
        .unwrap()
        .expect("A claims the queued job");
    let mut a_job = on_a.job.clone();
    a_job.provider_state = json!({"vm": "a"});
    a.save_job(&a_job, &on_a.lease).await.unwrap();
    a.append_logs(&on_a.lease, &[(now_ms(), "skylaunch", "A made vm a")])
        .await
        .unwrap();

    lapse_lease(&a, &job.id).await;
    let on_b = b
        .claim_job("process-b", in_a_minute(), now_ms())
        .await
        .unwrap()
        .expect("B takes over the lapsed job");
    assert!(on_b.reclaimed);
    let mut b_job = on_b.job.clone();
    b_job.provider_state = json!({"vm": "b"});
    b.save_job(&b_job, &on_b.lease).await.unwrap();
    b.append_logs(&on_b.lease, &[(now_ms(), "skylaunch", "B made vm b")])
        .await
        .unwrap();

    // A comes back, unaware: it would record a second VM, then fail the launch.
    a_job.provider_state = json!({"vm": "a-second"});
    let refused = a.save_job(&a_job, &on_a.lease).await;
    assert!(
        matches!(&refused, Err(StoreError::LeaseLost(id)) if *id == job.id),
        "{refused:?}"
    );
    a_job.status = JobStatus::Failed;
    a_job.finished_at = Some(now_ms());
    let refused = a.save_job(&a_job, &on_a.lease).await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost(_))),
        "{refused:?}"
    );
    let refused = a
        .append_logs(
            &on_a.lease,
            &[
                (now_ms(), "skylaunch", "A made vm a-second"),
                (now_ms(), "skylaunch", "launch failed"),
            ],
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost(_))),
        "{refused:?}"
    );
    assert_eq!(
        a.renew_lease(&on_a.lease, in_a_minute()).await.unwrap(),
        None
    );

    let stored = b.job(&job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Running);
    assert_eq!(stored.finished_at, None);
    assert_eq!(stored.provider_state, json!({"vm": "b"}));
    let lines: Vec<_> = b
        .job_logs(&job.id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(lines, ["A made vm a", "B made vm b"]);
    assert_eq!(lease_owner(&b, &job.id).await, "process-b");
    assert_eq!(
        b.renew_lease(&on_b.lease, in_a_minute()).await.unwrap(),
        Some(false),
        "B's lease holds"
    );
}

/// The fence is the claim, not only the process: a process whose lease lapsed and that claimed
/// the job again cannot write under its earlier claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_claim_by_the_same_process_fences_its_earlier_claim() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = Store::connect(&db.url).await.unwrap();
    let job = local_job("reclaimed", None);
    store.insert_job(&job, "{}", None).await.unwrap();
    let first = store
        .claim_job("process-a", in_a_minute(), now_ms())
        .await
        .unwrap()
        .unwrap();
    lapse_lease(&store, &job.id).await;
    let second = store
        .claim_job("process-a", in_a_minute(), now_ms())
        .await
        .unwrap()
        .expect("the lapsed job is claimable again");
    assert_eq!(second.lease.owner, first.lease.owner);

    let mut stale = first.job.clone();
    stale.provider_state = json!({"vm": "from-the-first-claim"});
    let refused = store.save_job(&stale, &first.lease).await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost(_))),
        "{refused:?}"
    );
    let mut current = second.job.clone();
    current.provider_state = json!({"vm": "from-the-second-claim"});
    store.save_job(&current, &second.lease).await.unwrap();
    assert_eq!(
        store.job(&job.id).await.unwrap().unwrap().provider_state,
        json!({"vm": "from-the-second-claim"})
    );
}

/// A launch provider for one of two runners: it records a VM named after its process, then
/// waits for the test to let it go on (A is cut off from the database there), and then records a
/// second one. Counts its teardowns.
struct CutOffProvider {
    process: &'static str,
    go_on: Notify,
    teardowns: AtomicU32,
}

impl CutOffProvider {
    fn new(process: &'static str) -> Arc<CutOffProvider> {
        Arc::new(CutOffProvider {
            process,
            go_on: Notify::new(),
            teardowns: AtomicU32::new(0),
        })
    }
}

impl LaunchProvider for CutOffProvider {
    fn launch<'a>(&'a self, run: &'a JobRun) -> BoxFuture<'a, Result<(), LaunchError>> {
        Box::pin(async move {
            run.set_provider_state(json!({"vm": self.process})).await;
            self.go_on.notified().await;
            let after = format!("{}-after-the-cut", self.process);
            run.set_provider_state(json!({"vm": after})).await;
            run.log.line("provider", &format!("{after} made")).await;
            Ok(())
        })
    }

    fn teardown<'a>(&'a self, _job: &'a Job) -> BoxFuture<'a, Result<(), LaunchError>> {
        self.teardowns.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

/// One control-plane process's job runner, with its own connections to the shared database.
async fn runner_process(db: &TestDb, provider: Arc<CutOffProvider>) -> (Store, Arc<JobRunner>) {
    let store = Store::connect(&db.url).await.unwrap();
    let fleet = Arc::new(
        Fleet::load(
            store.clone(),
            ServeConfig::defaults().health_policy(),
            Arc::new(Metrics::default()),
        )
        .await
        .unwrap(),
    );
    let providers = Providers::default().with(Provider::Local, provider);
    let runner = JobRunner::new(
        store.clone(),
        fleet,
        JobEvents::default(),
        providers,
        RunnerSettings {
            // Renewed every 10 s: well after this test is done with A, so what stops A is its
            // refused write, not a refused renewal.
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(50),
            // Busy with its one job, A does not claim it again itself once its lease lapses.
            max_concurrent: 1,
            registration_timeout: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(60),
            control_plane_url: "http://127.0.0.1:9".into(),
            agent_url: "http://127.0.0.1:9/agent".into(),
        },
    );
    (store, runner)
}

async fn provider_state(store: &Store, job_id: &str) -> Value {
    store.job(job_id).await.unwrap().unwrap().provider_state
}

/// Two job runners on one database: A's launch is cut off past its lease, B takes it over and
/// launches its own VM; when A goes on, its next write is refused, and A stops there: it
/// records nothing, tears nothing down and leaves the node alone, and B goes on with the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_cut_off_past_its_lease_stops_at_its_next_write_without_tearing_down() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let a_provider = CutOffProvider::new("a");
    let b_provider = CutOffProvider::new("b");
    let (a_store, a) = runner_process(&db, a_provider.clone()).await;
    let fleet = Fleet::load(
        a_store.clone(),
        ServeConfig::defaults().health_policy(),
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap();
    let job = local_job("cut-off", None);
    let (node, _) = fleet
        .create_node(
            NewNode {
                name: "cut-off".into(),
                model_name: "demo/echo".into(),
                endpoint_url: None,
                provider: Some("local".into()),
                labels: None,
            },
            Some(job.id.clone()),
        )
        .await
        .unwrap();
    let job = Job {
        node_id: Some(node.id.clone()),
        ..job
    };
    a_store.insert_job(&job, "{}", None).await.unwrap();
    let (stop_a, a_stopped) = watch::channel(false);
    let a_task = tokio::spawn(a.clone().run(a_stopped));
    within(Duration::from_secs(10), "A launched its VM", || async {
        provider_state(&a_store, &job.id).await == json!({"vm": "a"})
    })
    .await;

    lapse_lease(&a_store, &job.id).await;
    let (b_store, b) = runner_process(&db, b_provider.clone()).await;
    let (stop_b, b_stopped) = watch::channel(false);
    let b_task = tokio::spawn(b.clone().run(b_stopped));
    within(
        Duration::from_secs(10),
        "B took over and launched its VM",
        || async { provider_state(&b_store, &job.id).await == json!({"vm": "b"}) },
    )
    .await;

    a_provider.go_on.notify_one();
    within(
        Duration::from_secs(10),
        "A stops working on the job",
        || async { !a.runs(&job.id) },
    )
    .await;
    let stored = b_store.job(&job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Running, "{stored:?}");
    assert_eq!(stored.provider_state, json!({"vm": "b"}));
    assert_eq!(
        a_provider.teardowns.load(Ordering::SeqCst),
        0,
        "A tore down"
    );
    let logs: Vec<_> = b_store
        .job_logs(&job.id, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert!(
        !logs.iter().any(|l| l.contains("a-after-the-cut")),
        "{logs:#?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("launch failed")),
        "{logs:#?}"
    );
    let node = b_store.load_node(&node.id).await.unwrap().unwrap();
    assert_ne!(node.status, NodeStatus::Terminated, "{node:?}");
    assert!(b.runs(&job.id), "B still runs the job");

    let _ = stop_a.send(true);
    let _ = stop_b.send(true);
    a_task.await.unwrap();
    b_task.await.unwrap();
    b.hand_back().await;
}

/// Two processes reconcile one deployment on PostgreSQL: they launch each replica once
/// (deterministic action ids, launches queued in the transaction that starts their action). One
/// is SIGKILLed during a rolling update; the other finishes it with no duplicate or lost replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_reconcile_a_deployment_once_and_one_killed_mid_rollout_loses_nothing() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let settings = [
        ("SKYLAUNCH_RECONCILE_INTERVAL", "100ms"),
        ("SKYLAUNCH_REPLICA_UNHEALTHY_GRACE", "2s"),
        ("SKYLAUNCH_REPLICA_DRAIN_TIMEOUT", "10s"),
        ("SKYLAUNCH_OFFLINE_AFTER", "6s"),
    ];
    // Agents reach the control plane at one address, as they would through the load balancer
    // in front of several processes: here B's, so that replicas A launched outlive A's death
    // (an agent told A's own address could not heartbeat once A is gone, and its replica would
    // rightly be replaced).
    let b = Serve::start(&db, &settings).await;
    let mut to_b = settings.to_vec();
    to_b.push(("SKYLAUNCH_AGENT_URL", b.base.as_str()));
    let mut a = Serve::start(&db, &to_b).await;
    let spec = json!({"name": "twin", "model": "echo/twin", "provider": "local", "replicas": 2});
    let (status, body) = a
        .call(reqwest::Method::POST, "/admin/deployments", Some(&spec))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let serving = |d: &Value, revision: i64| {
        d["status"] == "serving"
            && d["nodes"].as_array().is_some_and(|n| {
                n.len() == 2
                    && n.iter()
                        .all(|n| n["revision"] == revision && n["status"] == "ready")
            })
    };
    within(
        Duration::from_secs(90),
        "2 replicas ready, seen on B",
        || async {
            let (_, d) = b
                .call(reqwest::Method::GET, "/admin/deployments/twin", None)
                .await;
            serving(&d, 1)
        },
    )
    .await;
    let replicas = |revision: i64| {
        let b = &b;
        async move {
            let (_, nodes) = b.call(reqwest::Method::GET, "/admin/nodes", None).await;
            nodes["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["deployment"] == "twin" && n["deployment_revision"] == revision)
                .cloned()
                .collect::<Vec<Value>>()
        }
    };
    assert_eq!(
        replicas(1).await.len(),
        2,
        "each replica launched once by the two processes"
    );

    // A rolling update; A dies (kill -9) once it is under way.
    let mut next = spec.clone();
    next["envs"] = json!({"MODEL_REVISION": "2"});
    let (status, body) = a
        .call(reqwest::Method::PUT, "/admin/deployments/twin", Some(&next))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    within(
        Duration::from_secs(30),
        "the rollout's first launch",
        || async { !replicas(2).await.is_empty() },
    )
    .await;
    a.sigkill().await;
    within(
        Duration::from_secs(120),
        "B finishes the rollout",
        || async {
            let (_, d) = b
                .call(reqwest::Method::GET, "/admin/deployments/twin", None)
                .await;
            serving(&d, 2)
        },
    )
    .await;
    // No duplicate and no lost replica: one live replica per slot, two slots. A replica whose
    // launch A had under way may stop heartbeating once A is killed (seen in CI: registered,
    // then silent; not explained yet); B then replaces it, and it ends terminated.
    let new = replicas(2).await;
    let live: Vec<&Value> = new.iter().filter(|n| n["status"] != "terminated").collect();
    let slots: BTreeSet<i64> = live
        .iter()
        .map(|n| n["deployment_slot"].as_i64().unwrap())
        .collect();
    let replaced = new.len() - live.len();
    assert!(
        live.len() == 2 && slots.len() == 2 && replaced <= 1,
        "no duplicate and no lost replica: {new:#?}\n--- A ---\n{}\n--- B ---\n{}",
        a.output(),
        b.output()
    );
    for old in replicas(1).await {
        within(
            Duration::from_secs(30),
            "the old replicas terminated",
            || async {
                let (_, n) = b
                    .call(
                        reqwest::Method::GET,
                        &format!("/admin/nodes/{}", old["id"].as_str().unwrap()),
                        None,
                    )
                    .await;
                n["status"] == "terminated"
            },
        )
        .await;
    }
    let (_, actions) = b
        .call(
            reqwest::Method::GET,
            "/admin/deployments/twin/actions",
            None,
        )
        .await;
    let launches = actions["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "launch_replica" || a["kind"] == "replace_replica")
        .count();
    assert_eq!(
        launches,
        4 + replaced,
        "two launches, two replacements (and one for a replica that died with A): {actions:#}"
    );
    // Cleanup: delete, and wait until nothing is left running.
    let (status, _) = b
        .call(reqwest::Method::DELETE, "/admin/deployments/twin", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    within(Duration::from_secs(60), "the deployment gone", || async {
        b.call(reqwest::Method::GET, "/admin/deployments/twin", None)
            .await
            .0
            == StatusCode::NOT_FOUND
    })
    .await;
    for node in replicas(2).await {
        assert!(agents_of(node["id"].as_str().unwrap()).is_empty());
    }
}
