//! The load balancer end to end: real HTTP servers on 127.0.0.1 stand in for model servers,
//! registered as nodes through the real API and kept ready by heartbeats; requests go through
//! the real control plane's `/v1/*`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use common::{Backend, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Notify;

/// How a stand-in model server answers.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// A small completion, after `delay_ms`.
    Complete { delay_ms: u64 },
    /// A small completion once the test opens the gate (`Upstream::answers`), however long
    /// that takes: a request stays in flight as long as the test needs it to.
    CompleteOnGate,
    /// 500 every time.
    Fail,
    /// An SSE stream: the first event at once, the rest when the test releases it.
    StreamOnRelease,
    /// The first SSE event, then the connection breaks.
    DieMidStream,
    /// Three SSE events, each after a pause of `pause_ms`.
    Trickle { pause_ms: u64 },
}

#[derive(Clone)]
struct Upstream {
    name: &'static str,
    behaviour: Behaviour,
    hits: Arc<AtomicUsize>,
    release: Arc<Notify>,
    /// Permits for `CompleteOnGate` answers.
    answers: Arc<tokio::sync::Semaphore>,
    /// Set when a streaming response's body was dropped before it finished (client went away).
    abandoned: Arc<AtomicBool>,
    /// The last request's headers and body size, as the model server received them.
    seen: Arc<std::sync::Mutex<Option<(axum::http::HeaderMap, usize)>>>,
}

struct DropFlag(Arc<AtomicBool>, bool);

impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

async fn serve(State(up): State<Upstream>, headers: axum::http::HeaderMap, body: Body) -> Response {
    // A model server takes long prompts: no body limit of its own.
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    up.hits.fetch_add(1, Ordering::SeqCst);
    *up.seen.lock().unwrap() = Some((headers, body.len()));
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let event = |text: &str| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"choices": [{"delta": {"content": text}}], "served_by": up.name})
        ))
    };
    match up.behaviour {
        Behaviour::Complete { .. } | Behaviour::CompleteOnGate => {
            match up.behaviour {
                Behaviour::Complete { delay_ms } => {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await
                }
                _ => up.answers.acquire().await.unwrap().forget(),
            }
            Response::builder()
                .header("content-type", "application/json")
                .header("x-model-server", "one")
                .header("x-model-server", "two")
                // A model server cannot pose as another node.
                .header("x-skylaunch-node", "forged")
                .body(Body::from(
                    json!({"object": "chat.completion", "served_by": up.name, "model": request["model"],
                           "choices": [{"message": {"role": "assistant", "content": "hi"}}]})
                    .to_string(),
                ))
                .unwrap()
        }
        Behaviour::Fail => Response::builder()
            .status(500)
            .body(Body::from("model server crashed"))
            .unwrap(),
        Behaviour::StreamOnRelease => {
            let first = event("first");
            let rest = event("rest");
            let release = up.release.clone();
            let flag = DropFlag(up.abandoned.clone(), false);
            let stream = futures_util::stream::unfold((0, Some(flag)), move |(step, flag)| {
                let (first, rest, release) = (first.clone(), rest.clone(), release.clone());
                async move {
                    match step {
                        0 => Some((Ok::<_, std::io::Error>(first), (1, flag))),
                        1 => {
                            release.notified().await;
                            Some((Ok(rest), (2, flag)))
                        }
                        _ => {
                            // Finished normally: not abandoned.
                            if let Some(mut f) = flag {
                                f.1 = true;
                            }
                            None
                        }
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Behaviour::DieMidStream => {
            let first = event("first");
            // The first event goes out; a moment later the server breaks off.
            let stream = futures_util::stream::unfold(0, move |step| {
                let first = first.clone();
                async move {
                    match step {
                        0 => Some((Ok(first), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Some((Err(std::io::Error::other("the GPU fell off the bus")), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Behaviour::Trickle { pause_ms } => {
            let events: Vec<Bytes> = (0..3).map(|i| event(&format!("part {i}"))).collect();
            let stream = futures_util::stream::unfold(0, move |step| {
                let event = events.get(step).cloned();
                async move {
                    let event = event?;
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    Some((Ok::<_, std::io::Error>(event), step + 1))
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

async fn upstream(name: &'static str, behaviour: Behaviour) -> (Upstream, String) {
    let up = Upstream {
        name,
        behaviour,
        hits: Arc::default(),
        release: Arc::new(Notify::new()),
        answers: Arc::new(tokio::sync::Semaphore::new(0)),
        abandoned: Arc::default(),
        seen: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().fallback(serve).with_state(up.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (up, url)
}

/// An address where nothing listens: connections are refused.
fn refusing_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A node serving `model` at `url`, registered and heartbeating with `score` (ready when the
/// score is high enough); returns its id and token.
async fn node_at(
    app: &TestApp,
    name: &str,
    model: &str,
    url: &str,
    score: f64,
) -> (String, String) {
    let (id, token) = app
        .create_node_from(&json!({"name": name, "model_name": model, "provider": "local"}))
        .await;
    let mut registration = common::registration();
    registration["model_name"] = model.into();
    registration["endpoint_url"] = url.into();
    let r = app
        .post(
            &format!("/admin/nodes/register?node_id={id}"),
            Some(&token),
            &registration,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    heartbeat(app, &id, &token, score).await;
    (id, token)
}

async fn heartbeat(app: &TestApp, id: &str, token: &str, score: f64) {
    let r = app
        .heartbeat(
            id,
            token,
            &json!({"health_score": score, "model_server": {"ready": true}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

async fn chat(app: &TestApp, model: &str) -> (StatusCode, Value) {
    let r = app
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
    (r.status, r.body)
}

/// A streaming chat request, its response not yet read.
async fn stream_chat(app: &TestApp, model: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": model, "stream": true, "messages": []}))
        .send()
        .await
        .unwrap()
}

async fn app() -> Option<TestApp> {
    app_with(|_| {}).await
}

/// [`app`], with `change` made to its settings first.
async fn app_with(change: impl FnOnce(&mut skylaunch::config::ServeConfig)) -> Option<TestApp> {
    let db = common::TestDb::new(Backend::Sqlite).await?;
    let mut config = common::test_config(&db);
    // Long heartbeats silences would otherwise mark the test's nodes unhealthy mid-test.
    config.heartbeat_interval = Duration::from_secs(30);
    config.offline_after = Duration::from_secs(300);
    config.eject_after = 2;
    config.eject_for = Duration::from_secs(60);
    config.proxy_body_limit = 3 * 1024 * 1024;
    change(&mut config);
    Some(TestApp::start(db, config).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_a_ready_node_of_their_model_and_models_are_listed() {
    let Some(app) = app().await else { return };
    let (llama, llama_url) = upstream("llama", Behaviour::Complete { delay_ms: 0 }).await;
    let (_, qwen_url) = upstream("qwen", Behaviour::Complete { delay_ms: 0 }).await;
    let (llama_id, _) = node_at(&app, "llama-1", "meta/llama", &llama_url, 0.9).await;
    node_at(&app, "qwen-1", "qwen/qwen", &qwen_url, 0.9).await;
    let (status, body) = chat(&app, "meta/llama").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["served_by"], "llama");
    assert_eq!(
        body["model"], "meta/llama",
        "the body reached the node intact"
    );
    assert_eq!(llama.hits.load(Ordering::SeqCst), 1);
    // The answer comes back with the model server's length, not re-chunked.
    let raw = app
        .client
        .post(app.url("/v1/chat/completions"))
        .body(r#"{"messages": [], "model": "meta\/llama", "temperature": 0.2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        raw.status(),
        StatusCode::OK,
        "an escaped model name is read"
    );
    let repeated: Vec<_> = raw.headers().get_all("x-model-server").iter().collect();
    assert_eq!(repeated, ["one", "two"], "every value of a repeated header");
    let node: Vec<_> = raw.headers().get_all("x-skylaunch-node").iter().collect();
    assert_eq!(
        node,
        [llama_id.as_str()],
        "the node that answered, and only it"
    );
    // Each answer's time to its first body byte, per model.
    let page = app.metrics().await;
    let answered = common::metric_value(
        &page,
        r#"skylaunch_proxy_first_byte_seconds_count{model="meta/llama"}"#,
    );
    assert!(answered.is_some_and(|n| n >= 1.0), "{page}");
    let length = raw.content_length().expect("a content-length");
    let text = raw.text().await.unwrap();
    assert_eq!(length as usize, text.len());
    assert!(text.contains(r#""served_by":"llama""#), "{text}");
    let models = app.get("/v1/models", None).await.body;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["meta/llama", "qwen/qwen"]);
    let r = app
        .post("/v1/embeddings", None, &json!({"input": "x"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["error"]["field"], "model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_node_is_503_with_the_counts_by_status() {
    let Some(app) = app().await else { return };
    app.post(
        "/admin/nodes",
        Some(ADMIN_TOKEN),
        &json!({"name": "booting", "model_name": "m", "provider": "local"}),
    )
    .await;
    let (_, url) = upstream("sick", Behaviour::Complete { delay_ms: 0 }).await;
    node_at(&app, "sick", "m", &url, 0.1).await;
    let (status, body) = chat(&app, "m").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "no_healthy_nodes");
    assert_eq!(
        body["error"]["message"],
        "no healthy nodes for model m: 1 launching, 1 unhealthy"
    );
    assert_eq!(
        body["error"]["nodes"],
        json!({"launching": 1, "unhealthy": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_no_node_serves_is_404_and_one_still_booting_is_503() {
    let Some(app) = app().await else { return };
    let (status, body) = chat(&app, "nobody/serves-this").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["model"], "nobody/serves-this");
    // A terminated node serves nothing: still unknown.
    let (id, _) = app
        .create_node_from(
            &json!({"name": "gone", "model_name": "nobody/serves-this", "provider": "local"}),
        )
        .await;
    assert_eq!(app.delete_node(&id).await.status, StatusCode::OK);
    let (status, _) = chat(&app, "nobody/serves-this").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A node that is coming up makes it a model worth retrying.
    app.create_node_from(
        &json!({"name": "booting", "model_name": "nobody/serves-this", "provider": "local"}),
    )
    .await;
    let (status, body) = chat(&app, "nobody/serves-this").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "no_healthy_nodes");
}

/// 404s answered on `/v1/chat/completions`, from `/metrics`.
fn chat_404s(page: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with("skylaunch_http_requests_total{"))
        .filter(|l| l.contains("\"/v1/chat/completions\"") && l.contains("\"404\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The real OpenAI Python SDK (in the test venv) as a client: an unknown model is a
/// `NotFoundError` at once, not something it retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_takes_an_unknown_model_as_not_found_without_retrying() {
    let python = std::env::var_os("SKYLAUNCH_TEST_PYTHON").filter(|p| {
        std::process::Command::new(p)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        let why = "SKYLAUNCH_TEST_PYTHON does not point at a Python with openai installed (scripts/test sets it up)";
        assert!(
            !common::in_ci(),
            "the OpenAI SDK is required under CI=true: {why}"
        );
        eprintln!("\n!!! SKIPPED: OpenAI SDK test: {why}\n");
        return;
    };
    let Some(app) = app().await else { return };
    let before = chat_404s(&app.metrics().await);
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=3, timeout=20)
try:
    client.chat.completions.create(model="nobody/serves-this",
                                   messages=[{"role": "user", "content": "hi"}])
    print("answered")
except openai.NotFoundError as e:
    print("not_found", e.status_code, e.code)
except openai.APIStatusError as e:
    print("other", e.status_code)
"#;
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", script, &base])
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(printed.trim(), "not_found 404 model_not_found");
    let after = chat_404s(&app.metrics().await);
    assert_eq!(after - before, 1.0, "one request: the SDK did not retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_health_and_load() {
    let Some(app) = app().await else { return };
    let (strong_a, url_a) = upstream("strong-a", Behaviour::Complete { delay_ms: 40 }).await;
    let (strong_b, url_b) = upstream("strong-b", Behaviour::Complete { delay_ms: 40 }).await;
    let (weak, url_w) = upstream("weak", Behaviour::Complete { delay_ms: 40 }).await;
    node_at(&app, "strong-a", "m", &url_a, 1.0).await;
    node_at(&app, "strong-b", "m", &url_b, 1.0).await;
    node_at(&app, "weak", "m", &url_w, 0.6).await;
    // One at a time: the weaker node never wins a draw against an equally idle stronger one.
    for _ in 0..30 {
        assert_eq!(chat(&app, "m").await.0, StatusCode::OK);
    }
    assert_eq!(weak.hits.load(Ordering::SeqCst), 0);
    // Under load the busier nodes lose draws to idler ones; the weaker node still gets less.
    let requests: Vec<_> = (0..60)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/v1/chat/completions");
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"model": "m", "messages": []}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    let (a, b, w) = (
        strong_a.hits.load(Ordering::SeqCst),
        strong_b.hits.load(Ordering::SeqCst),
        weak.hits.load(Ordering::SeqCst),
    );
    assert_eq!(a + b + w, 90);
    assert!(w < a && w < b, "the weaker node gets less: {a} {b} {w}");
}

/// A broken node at `broken_url` that looks healthier than a good one, so it is drawn first
/// while routable: every request still ends on the good node, and the broken node's failures
/// are counted with `status`.
async fn retried_on_the_good_node(broken_url: &str, status: &str) {
    let Some(app) = app().await else { return };
    let (good, good_url) = upstream("good", Behaviour::Complete { delay_ms: 0 }).await;
    node_at(&app, "broken", "m", broken_url, 1.0).await;
    node_at(&app, "good", "m", &good_url, 0.5).await;
    for _ in 0..5 {
        let (code, body) = chat(&app, "m").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["served_by"], "good");
    }
    assert_eq!(good.hits.load(Ordering::SeqCst), 5);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!("status=\"{status}\"")) && metrics.contains("node=\"broken\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_node() {
    retried_on_the_good_node(&refusing_url(), "connect_error").await;
}

/// A model server that reads each request and closes the connection without a byte of answer,
/// as one killed mid-request does.
async fn hanging_up_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
                drop(socket);
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_any_answer_is_retried_on_another_node() {
    retried_on_the_good_node(&hanging_up_url().await, "closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_node_is_ejected_gets_no_traffic_and_the_ejection_is_recorded() {
    let Some(app) = app().await else { return };
    let (bad, bad_url) = upstream("bad", Behaviour::Fail).await;
    let (good, good_url) = upstream("good", Behaviour::Complete { delay_ms: 0 }).await;
    let (bad_id, _) = node_at(&app, "bad", "m", &bad_url, 1.0).await;
    node_at(&app, "good", "m", &good_url, 0.5).await;
    // The healthier-looking bad node is drawn first until it is ejected (2 failures in a row);
    // a 500 is an answer, passed to the client, not retried.
    for _ in 0..2 {
        assert_eq!(chat(&app, "m").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    for _ in 0..20 {
        assert_eq!(chat(&app, "m").await.0, StatusCode::OK);
    }
    assert_eq!(
        bad.hits.load(Ordering::SeqCst),
        2,
        "no traffic while ejected"
    );
    assert_eq!(good.hits.load(Ordering::SeqCst), 20);
    let node = app.node(&bad_id).await;
    let ejected = node["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "ejected")
        .unwrap_or_else(|| panic!("no ejection event: {node:#}"));
    assert!(ejected["reason"]
        .as_str()
        .unwrap()
        .contains("2 failed requests in a row"));
    assert!(app
        .metrics()
        .await
        .contains("skylaunch_proxy_ejections_total{node=\"bad\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_or_unhealthy_nodes_stop_receiving_at_once() {
    let Some(app) = app().await else { return };
    let (a, url_a) = upstream("a", Behaviour::Complete { delay_ms: 0 }).await;
    let (b, url_b) = upstream("b", Behaviour::Complete { delay_ms: 0 }).await;
    let (id_a, _) = node_at(&app, "a", "m", &url_a, 1.0).await;
    let (id_b, token_b) = node_at(&app, "b", "m", &url_b, 0.9).await;
    assert_eq!(chat(&app, "m").await.1["served_by"], "a");
    let r = app.drain(&id_a).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for _ in 0..5 {
        assert_eq!(chat(&app, "m").await.1["served_by"], "b");
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
    heartbeat(&app, &id_b, &token_b, 0.2).await;
    assert_eq!(app.node(&id_b).await["status"], "unhealthy");
    assert_eq!(chat(&app, "m").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b.hits.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chunks_pass_through_before_the_upstream_finishes() {
    let Some(app) = app().await else { return };
    let (up, url) = upstream("streamer", Behaviour::StreamOnRelease).await;
    node_at(&app, "streamer", "m", &url, 1.0).await;
    let mut response = stream_chat(&app, "m").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // The upstream holds the rest until released: a buffering proxy would never get here.
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("the first chunk arrives while the upstream still holds the rest")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("first"));
    up.release.notify_one();
    let rest = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("rest"));
    assert!(response.chunk().await.unwrap().is_none());
    assert!(!up.abandoned.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_going_away_cancels_the_upstream_request() {
    let Some(app) = app().await else { return };
    let (up, url) = upstream("streamer", Behaviour::StreamOnRelease).await;
    node_at(&app, "streamer", "m", &url, 1.0).await;
    let mut response = stream_chat(&app, "m").await;
    response.chunk().await.unwrap().unwrap();
    drop(response);
    for _ in 0..100 {
        if up.abandoned.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        up.abandoned.load(Ordering::SeqCst),
        "the upstream stream was dropped when the client left"
    );
    assert!(
        app.metrics()
            .await
            .contains("skylaunch_proxy_in_flight{node=\"streamer\"} 0"),
        "the request no longer counts as in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_mid_stream_is_a_clean_error_and_is_not_retried() {
    let Some(app) = app().await else { return };
    let (dying, dying_url) = upstream("dying", Behaviour::DieMidStream).await;
    let (other, other_url) = upstream("other", Behaviour::Complete { delay_ms: 0 }).await;
    node_at(&app, "dying", "m", &dying_url, 1.0).await;
    node_at(&app, "other", "m", &other_url, 0.5).await;
    let mut response = stream_chat(&app, "m").await;
    assert_eq!(response.status(), StatusCode::OK);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("first"));
    let mut ended_in_error = false;
    for _ in 0..10 {
        match response.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(_) => {
                ended_in_error = true;
                break;
            }
        }
    }
    assert!(
        ended_in_error,
        "the client sees the response break, not a clean end"
    );
    assert_eq!(dying.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        other.hits.load(Ordering::SeqCst),
        0,
        "never retried once started"
    );
}

/// The whole body of a streamed answer, and whether it ended in an error.
async fn read_to_end(mut response: reqwest::Response) -> (String, bool) {
    let mut text = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => return (text, false),
            Ok(Err(_)) => return (text, true),
            Err(_) => panic!("the answer neither went on nor ended within 20 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_ends_a_silent_stream_and_counts_each_pause_on_its_own() {
    let Some(db) = common::TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let mut config = common::test_config(&db);
    config.heartbeat_interval = Duration::from_secs(30);
    config.offline_after = Duration::from_secs(300);
    config.proxy_idle_timeout = Duration::from_millis(1500);
    config.proxy_connect_timeout = Duration::from_millis(500);
    let app = TestApp::start(db, config).await;

    // Silent after the first event: the answer breaks off after the idle timeout, and the
    // request no longer counts as in flight.
    let (_silent, silent_url) = upstream("silent", Behaviour::StreamOnRelease).await;
    node_at(&app, "silent", "quiet", &silent_url, 1.0).await;
    let (text, failed) = read_to_end(stream_chat(&app, "quiet").await).await;
    assert!(text.contains("first"), "{text}");
    assert!(
        failed,
        "a stream that went silent ends in an error, not cleanly"
    );
    assert!(
        app.metrics()
            .await
            .contains("skylaunch_proxy_in_flight{node=\"silent\"} 0"),
        "the silent request no longer counts as in flight"
    );

    // Three pauses of 0.8 s: 2.4 s in all, each under the 1.5 s timeout. The timeout is for the
    // wait between two chunks, not for the whole answer.
    let (_slow, slow_url) = upstream("slow", Behaviour::Trickle { pause_ms: 800 }).await;
    node_at(&app, "slow", "slow", &slow_url, 1.0).await;
    let (text, failed) = read_to_end(stream_chat(&app, "slow").await).await;
    assert!(!failed, "a slow but steady stream is not cut off: {text}");
    for part in ["part 0", "part 1", "part 2"] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_v1_when_configured() {
    let Some(db) = common::TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let mut config = common::test_config(&db);
    config.api_keys = vec!["sk-test-1".into(), "sk-test-2".into()];
    let app = TestApp::start(db, config).await;
    let r = app.get("/v1/models", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "invalid_api_key");
    assert_eq!(
        app.get("/v1/models", Some("sk-test-2")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/v1/models", Some(ADMIN_TOKEN)).await.status,
        StatusCode::UNAUTHORIZED,
        "the admin token is not an API key"
    );
}

/// A chat request with a chunked body (which the server's own loop hands to hyper).
fn post_chat_chunked(model: &str, extra_headers: &str) -> Vec<u8> {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: skylaunch\r\ncontent-type: application/json\r\n{extra_headers}transfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_inference_on_both_request_paths() {
    let Some(app) = app_with(|c| c.api_keys = vec!["sk-test-1".into(), "sk-test-2".into()]).await
    else {
        return;
    };
    let (up, url) = upstream("keyed", Behaviour::Complete { delay_ms: 0 }).await;
    node_at(&app, "keyed-1", "m", &url, 1.0).await;
    // A length-framed body (the server's own loop) and a chunked one (hyper's).
    for (path, request) in [
        ("own loop", post_chat as fn(&str, &str) -> Vec<u8>),
        ("hyper", post_chat_chunked),
    ] {
        for (auth, expected) in [
            ("", 401),
            ("authorization: Bearer sk-wrong\r\n", 401),
            ("authorization: Bearer sk-test-1x\r\n", 401),
            ("authorization: sk-test-1\r\n", 401),
            (&format!("authorization: Bearer {ADMIN_TOKEN}\r\n"), 401),
            ("authorization: Bearer sk-test-2\r\n", 200),
        ] {
            let mut client = RawClient::connect(&app).await;
            client.send(&request("m", auth)).await;
            let r = client.response().await;
            assert_eq!(
                r.status,
                expected,
                "{path}, {auth:?}: {}",
                String::from_utf8_lossy(&r.body)
            );
            if expected == 401 {
                assert_eq!(r.json()["error"]["code"], "invalid_api_key", "{path}");
            } else {
                assert_eq!(r.json()["served_by"], "keyed", "{path}");
            }
        }
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        2,
        "only the keyed requests reached the model server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_its_key_is_refused_before_its_body_is_asked_for() {
    let Some(app) = app_with(|c| c.api_keys = vec!["sk-test-1".into()]).await else {
        return;
    };
    // Both paths: a declared length (the own loop) and a chunked body (hyper), each waiting
    // for `100 Continue` before sending a body that never comes.
    for framing in ["content-length: 1000000", "transfer-encoding: chunked"] {
        let mut client = RawClient::connect(&app).await;
        client
            .send(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: skylaunch\r\nexpect: 100-continue\r\n{framing}\r\n\r\n").as_bytes())
            .await;
        let r = client.response().await;
        assert_eq!(
            r.status, 401,
            "{framing}: no 100 Continue, no wait for the body"
        );
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_connection_cap_agents_still_get_in_and_clients_are_told_to_retry() {
    // Three places, the last kept for agents.
    let Some(app) = app_with(|c| {
        c.max_connections = 3;
        c.max_connections_per_source = 0;
        c.agent_connection_reserve = 1;
    })
    .await
    else {
        return;
    };
    // The model server answers only when the test says so: were it to answer on a timer, a slow
    // machine could see the busy connections turn idle (and evictable) before the third arrives.
    let (up, url) = upstream("slow", Behaviour::CompleteOnGate).await;
    let (id, token) = node_at(&app, "slow-1", "m", &url, 1.0).await;
    // Two clients hold the two full places with requests in flight.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut client = RawClient::connect(&app).await;
        client.send(&post_chat("m", "")).await;
        busy.push(client);
    }
    for _ in 0..200 {
        if up.hits.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 2);
    // A third client lands in the agents' place: told to come back, not served.
    let mut third = RawClient::connect(&app).await;
    third.send(&post_chat("m", "")).await;
    let r = third.response().await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        2,
        "it never reached the model server"
    );
    // The agent's heartbeat is served there.
    let r = app
        .heartbeat(
            &id,
            &token,
            &json!({"health_score": 1.0, "model_server": {"ready": true}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The clients in flight get their answers.
    up.answers.add_permits(2);
    for mut client in busy {
        assert_eq!(client.response().await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_and_an_idle_kept_connection_are_closed_by_their_timeouts() {
    let Some(app) = app_with(|c| {
        c.body_timeout = Duration::from_secs(1);
        c.keepalive_timeout = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    // A body that stops halfway, on the own loop and on hyper's (chunked).
    for head in [
        "POST /v1/chat/completions HTTP/1.1\r\nhost: s\r\ncontent-length: 100\r\n\r\n{\"model\":",
        "POST /v1/chat/completions HTTP/1.1\r\nhost: s\r\ntransfer-encoding: chunked\r\n\r\n64\r\n{\"model\":",
    ] {
        let mut client = RawClient::connect(&app).await;
        client.send(head.as_bytes()).await;
        // Whatever comes (hyper answers a broken body with an error), the connection ends.
        while client.fill().await {}
    }
    // A kept-alive connection that asks nothing more.
    let mut client = RawClient::connect(&app).await;
    client
        .send(b"GET /healthz HTTP/1.1\r\nhost: s\r\n\r\n")
        .await;
    assert_eq!(client.response().await.status, 200);
    assert!(client.closed().await);
    let metrics = app.metrics().await;
    for reason in ["body_timeout", "idle_timeout"] {
        let series = format!("skylaunch_connections_closed_total{{reason=\"{reason}\"}}");
        let closed = common::metric_value(&metrics, &series);
        assert!(closed.is_some_and(|n| n > 0.0), "{reason}: {closed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_download_is_streamed_whole_with_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("skylaunch-agent");
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    std::fs::write(&agent, &bytes).unwrap();
    let Some(app) = app_with(|c| c.agent_bin = Some(agent.clone())).await else {
        return;
    };
    let r = app
        .client
        .get(app.url("/downloads/skylaunch-agent"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.content_length(), Some(bytes.len() as u64));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_pass_up_to_the_proxy_limit_and_credentials_stay_behind() {
    let Some(app) = app().await else { return };
    let (up, url) = upstream("big", Behaviour::Complete { delay_ms: 0 }).await;
    node_at(&app, "big", "m", &url, 1.0).await;
    // 2 MiB: over the admin API's 1 MiB, under this proxy's 3 MiB.
    let prompt = "x".repeat(2 * 1024 * 1024);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": prompt}]});
    let sent = serde_json::to_vec(&body).unwrap().len();
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-client-key")
        .header("x-admin-token", ADMIN_TOKEN)
        .header("cookie", "session=abc")
        .header("x-request-id", "req-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, StatusCode::OK, "{}", r.text().await.unwrap());
    let (headers, received) = up.seen.lock().unwrap().clone().unwrap();
    assert_eq!(received, sent, "the whole body reached the model server");
    for private in ["authorization", "x-admin-token", "cookie"] {
        assert!(!headers.contains_key(private), "{private} was forwarded");
    }
    assert_eq!(headers["x-request-id"], "req-42");
    assert_eq!(headers["content-type"], "application/json");
    // Over the limit: refused, and the model server never sees it.
    let huge = json!({"model": "m", "prompt": "x".repeat(4 * 1024 * 1024)});
    let r = app
        .client
        .post(app.url("/v1/completions"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

/// A model server on raw TCP that counts the connections it accepts. It answers each request on
/// a connection in turn with a small completion, chunked when the request asks to stream. With
/// `close_idle_after`, it closes a connection that long after its last answer, as uvicorn's
/// keep-alive timeout does. Returns the connections accepted, and those still open.
async fn keep_alive_server(
    close_idle_after: Option<Duration>,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (count, still_open) = (accepted.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            still_open.fetch_add(1, Ordering::SeqCst);
            let still_open = still_open.clone();
            tokio::spawn(async move {
                answer_each_request(socket, close_idle_after).await;
                still_open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (accepted, open, url)
}

async fn answer_each_request(socket: tokio::net::TcpStream, close_idle_after: Option<Duration>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut reader = tokio::io::BufReader::new(socket);
    let mut line = String::new();
    loop {
        let mut content_length = 0;
        let mut first = true;
        loop {
            line.clear();
            let read = match close_idle_after {
                Some(after) if first => {
                    match tokio::time::timeout(after, reader.read_line(&mut line)).await {
                        Ok(read) => read,
                        Err(_) => return, // idle too long: the connection is closed
                    }
                }
                _ => reader.read_line(&mut line).await,
            };
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
            first = false;
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let streaming = String::from_utf8_lossy(&body).contains("\"stream\":true");
        let answer = if streaming {
            let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{}{}0\r\n\r\n",
                chunk("data: {\"served_by\": \"kept\"}\n\n"),
                chunk("data: [DONE]\n\n")
            )
        } else {
            let json = r#"{"object": "chat.completion", "served_by": "kept"}"#;
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                json.len()
            )
        };
        if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_a_model_server_are_kept_and_reused_once_an_answer_was_read() {
    // Each thread that serves client connections keeps its own connections to model servers
    // (`routing::upstream` tests that); with one, the counts below do not depend on which
    // thread the test client's connections land on.
    let Some(app) = app_with(|config| config.connection_threads = 1).await else {
        return;
    };
    let (accepted, open, url) = keep_alive_server(None).await;
    node_at(&app, "kept", "m", &url, 1.0).await;
    for _ in 0..3 {
        let (code, body) = chat(&app, "m").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["served_by"], "kept");
        // A streamed (chunked) answer read to its end gives its connection back too.
        let (text, failed) = read_to_end(stream_chat(&app, "m").await).await;
        assert!(!failed && text.contains("[DONE]"), "{text}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "six requests one after another share one connection"
    );

    // Two at once need two connections; both are kept for what follows.
    let (a, b) = tokio::join!(chat(&app, "m"), chat(&app, "m"));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    let opened = accepted.load(Ordering::SeqCst);
    assert!((1..=2).contains(&opened), "{opened} connections");
    for _ in 0..3 {
        assert_eq!(chat(&app, "m").await.0, StatusCode::OK);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), opened);

    // With no traffic, skylaunch closes them itself once they are too old to reuse (4 s), even
    // though this model server would keep them open for ever.
    let mut waited = 0;
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            waited < 300,
            "idle connections still open after 15 s: {}",
            open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(chat(&app, "m").await.0, StatusCode::OK, "a new one is made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_the_model_server_closed_is_not_used_and_not_held_against_it() {
    let Some(app) = app().await else { return };
    let (accepted, _, url) = keep_alive_server(Some(Duration::from_millis(100))).await;
    node_at(&app, "closing", "m", &url, 1.0).await;
    for round in 1..=3 {
        let (code, body) = chat(&app, "m").await;
        assert_eq!(code, StatusCode::OK, "round {round}: {body}");
        assert_eq!(accepted.load(Ordering::SeqCst), round);
        // The model server closes the idle connection meanwhile.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = app.metrics().await;
    assert!(
        !metrics.contains("status=\"closed\"")
            && !metrics.contains("skylaunch_proxy_ejections_total{"),
        "a connection closed while idle is not a failure of the node: {metrics}"
    );
}

/// One connection to the control plane, written and read byte by byte as a client would.
struct RawClient {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// A response as read off the wire: status, headers (names in lower case), body (un-chunked).
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl RawClient {
    async fn connect(app: &TestApp) -> RawClient {
        let addr = app.base.trim_start_matches("http://").to_string();
        RawClient {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more into the buffer; false at the connection's end.
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("the server answers within 10 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response on the connection (an interim 1xx one included).
    async fn response(&mut self) -> RawResponse {
        self.read_response(true).await
    }

    /// The next response, to a `HEAD` request: no body follows its head.
    async fn response_to_head(&mut self) -> RawResponse {
        self.read_response(false).await
    }

    async fn read_response(&mut self, with_body: bool) -> RawResponse {
        loop {
            let mut lines = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut lines);
            if let httparse::Status::Complete(len) = parsed.parse(&self.buf).unwrap() {
                let status = parsed.code.unwrap();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..len);
                let mut response = RawResponse {
                    status,
                    headers,
                    body: Vec::new(),
                };
                if with_body && status >= 200 && status != 204 && status != 304 {
                    response.body = self.body(&response).await;
                }
                return response;
            }
            assert!(self.fill().await, "the connection ended before a response");
        }
    }

    async fn body(&mut self, response: &RawResponse) -> Vec<u8> {
        if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().unwrap();
            while self.buf.len() < length {
                assert!(self.fill().await, "the connection ended within a body");
            }
            return self.buf.drain(..length).collect();
        }
        assert_eq!(response.header("transfer-encoding"), Some("chunked"));
        let mut body = Vec::new();
        loop {
            let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                assert!(self.fill().await, "the connection ended within a body");
                continue;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.buf[..end]).unwrap(), 16).unwrap();
            while self.buf.len() < end + 2 + size + 2 {
                assert!(self.fill().await, "the connection ended within a chunk");
            }
            body.extend_from_slice(&self.buf[end + 2..end + 2 + size]);
            self.buf.drain(..end + 2 + size + 2);
            if size == 0 {
                return body;
            }
        }
    }

    /// Whether the server closed the connection (nothing more comes).
    async fn closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}

fn post_chat(model: &str, extra_headers: &str) -> Vec<u8> {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: skylaunch\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_inference_and_other_requests_in_turn_and_pipelined() {
    let Some(app) = app().await else { return };
    let (up, url) = upstream("llama", Behaviour::Complete { delay_ms: 0 }).await;
    node_at(&app, "llama-1", "m", &url, 1.0).await;
    let mut client = RawClient::connect(&app).await;
    // In turn: inference, an admin read, inference again.
    client.send(&post_chat("m", "")).await;
    let r = client.response().await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["served_by"], "llama");
    assert_eq!(r.header("content-length"), Some(&*r.body.len().to_string()));
    let repeated: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "x-model-server")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(repeated, ["one", "two"], "every value of a repeated header");
    client
        .send(b"GET /healthz HTTP/1.1\r\nhost: skylaunch\r\n\r\n")
        .await;
    assert_eq!(client.response().await.status, 200);
    client.send(&post_chat("m", "")).await;
    assert_eq!(client.response().await.json()["served_by"], "llama");
    // Pipelined in one write: the answers come back in order.
    let mut three = post_chat("m", "x-request-id: first\r\n");
    three.extend_from_slice(b"GET /v1/models HTTP/1.1\r\nhost: skylaunch\r\n\r\n");
    three.extend_from_slice(&post_chat("nobody-serves-this", ""));
    client.send(&three).await;
    assert_eq!(client.response().await.json()["served_by"], "llama");
    let models = client.response().await.json();
    assert_eq!(models["data"][0]["id"], "m", "{models}");
    let none = client.response().await;
    assert_eq!(none.status, 404);
    assert_eq!(none.json()["error"]["code"], "model_not_found");
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);
    let (seen, _) = up.seen.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-request-id"], "first", "request headers went on");
    // A client that waits for 100 Continue before sending its body.
    let request = post_chat("m", "expect: 100-continue\r\n");
    let split = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    client.send(&request[..split]).await;
    assert_eq!(client.response().await.status, 100);
    client.send(&request[split..]).await;
    assert_eq!(client.response().await.json()["served_by"], "llama");
    // A chunked body (hyper reads those), and the same connection still serves after it.
    let body = json!({"model": "m", "messages": []}).to_string();
    let chunked = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: skylaunch\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    client.send(chunked.as_bytes()).await;
    assert_eq!(client.response().await.json()["served_by"], "llama");
    client.send(&post_chat("m", "")).await;
    assert_eq!(client.response().await.json()["served_by"], "llama");
    // Asked to, the server closes the connection after the answer.
    let mut client = RawClient::connect(&app).await;
    client.send(&post_chat("m", "connection: close\r\n")).await;
    let r = client.response().await;
    assert_eq!(r.json()["served_by"], "llama");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(client.closed().await, "the connection was closed");
    assert_eq!(up.hits.load(Ordering::SeqCst), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_requests_get_proper_http_answers() {
    let Some(app) = app().await else { return };
    let (up, url) = upstream("llama", Behaviour::Complete { delay_ms: 0 }).await;
    node_at(&app, "llama-1", "m", &url, 1.0).await;
    // HTTP/1.0, without keep-alive: answered, then closed.
    let mut client = RawClient::connect(&app).await;
    client.send(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(client.response().await.status, 200);
    assert!(client.closed().await);
    // Not HTTP at all: a JSON error, like every other, then the connection closes.
    let mut client = RawClient::connect(&app).await;
    client.send(b"GARBAGE\x01 / HTTP/9\r\n\r\n").await;
    let r = client.response().await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["code"],
        "malformed_request",
        "{:?}",
        r.body
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(client.closed().await);
    // A forwarded route without a body is a clear 400, not a node's problem.
    let mut client = RawClient::connect(&app).await;
    client
        .send(b"POST /v1/completions HTTP/1.1\r\nhost: skylaunch\r\n\r\n")
        .await;
    let r = client.response().await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_request");
    // HEAD of a page, and an admin call without its token, on one connection.
    client
        .send(b"HEAD /healthz HTTP/1.1\r\nhost: skylaunch\r\n\r\n")
        .await;
    let head = client.response_to_head().await;
    assert_eq!(head.status, 200);
    client
        .send(b"GET /admin/nodes HTTP/1.1\r\nhost: skylaunch\r\n\r\n")
        .await;
    assert_eq!(client.response().await.status, 401);
    // Bad JSON on the fast path changes nothing and reaches no node.
    let mut client = RawClient::connect(&app).await;
    client
        .send(b"POST /v1/embeddings HTTP/1.1\r\nhost: skylaunch\r\ncontent-length: 5\r\n\r\n{oops")
        .await;
    let r = client.response().await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_request");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}
