//! API keys end to end: keys made through the admin API, held to their models and limits by
//! the real load balancer in front of a real echo replica (the local provider, the real
//! agent); tokens metered from the echo server's own `usage`, streams included; revocation
//! heard at once by a second control plane on the same PostgreSQL database.

mod common;
mod standins;

use std::time::Duration;

use common::{Backend, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn serving(backend: Backend, model: &str) -> Option<TestApp> {
    let app = standins::local_app(backend, |_| {}).await?;
    let name = model.replace('/', "-");
    app.create_deployment(
        &json!({"name": name, "model": model, "provider": "local", "replicas": 1}),
    )
    .await;
    app.wait_deployment(&name, "its replica ready", |d| d["replicas"]["ready"] == 1)
        .await;
    Some(app)
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "how many tokens is this?"}]})
}

async fn make_key(app: &TestApp, spec: Value) -> (String, String) {
    let r = app.post("/admin/api-keys", Some(ADMIN_TOKEN), &spec).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let key = r.body["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-sl-"));
    (r.body["id"].as_str().unwrap().to_string(), key)
}

/// A key as `GET /admin/api-keys` lists it.
async fn listed(base: &str, id: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{base}/admin/api-keys"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is not listed: {body}"))
}

/// Waits (bounded) until the key's listing satisfies `done`.
async fn wait_listed(base: &str, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        last = listed(base, id).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the key never showed {what}: {last:#}");
}

async fn post_chat(base: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .timeout(Duration::from_secs(10))
        .json(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.expect("the load balancer answers")
}

async fn code_of(r: reqwest::Response) -> (StatusCode, String, Value) {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_held_to_its_models_and_request_limit_and_refused_once_revoked() {
    let Some(app) = serving(Backend::Sqlite, "echo/one").await else {
        return;
    };
    // Open until a key is made.
    assert_eq!(
        post_chat(&app.base, None, &chat("echo/one")).await.status(),
        200
    );
    let (id, key) = make_key(
        &app,
        json!({"name": "team-a", "models": ["echo/one"], "requests_per_minute": 3}),
    )
    .await;
    let (status, code, _) = code_of(post_chat(&app.base, None, &chat("echo/one")).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );
    let (status, code, _) =
        code_of(post_chat(&app.base, Some("sk-sl-made-up"), &chat("echo/one")).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );

    // Another model: 403, and it does not count against the limit.
    let (status, code, body) =
        code_of(post_chat(&app.base, Some(&key), &chat("echo/two")).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "model_not_allowed"),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("echo/one"));

    for i in 0..3 {
        let r = post_chat(&app.base, Some(&key), &chat("echo/one")).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    let r = post_chat(&app.base, Some(&key), &chat("echo/one")).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, code, body) = code_of(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "{body}"
    );
    assert_eq!(body["error"]["limit"], "requests_per_minute");
    assert!((1..=120).contains(&retry_after), "{retry_after}");
    let view = listed(&app.base, &id).await;
    assert_eq!(view["requests_last_minute"], 3, "{view}");
    assert_eq!(view["status"], "active");
    assert!(
        view.get("key").is_none() && view.get("hash").is_none(),
        "{view}"
    );
    assert_eq!(view["prefix"], key[..12]);

    // Revoked: refused at once, on /v1/models too.
    let r = app
        .delete(&format!("/admin/api-keys/{id}"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "revoked");
    let (status, code, _) =
        code_of(post_chat(&app.base, Some(&key), &chat("echo/one")).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "api_key_revoked")
    );
    let r = app.get("/v1/models", Some(&key)).await;
    assert_eq!(r.error_code(), "api_key_revoked");
    // Still closed with every key revoked.
    let (status, _, _) = code_of(post_chat(&app.base, None, &chat("echo/one")).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Bad input changes nothing.
    let r = app
        .post(
            "/admin/api-keys",
            Some(ADMIN_TOKEN),
            &json!({"name": "x", "requests_per_minute": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["field"], "requests_per_minute");
    let r = app.get("/admin/api-keys", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.body["api_keys"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.delete("/admin/api-keys/nope", Some(ADMIN_TOKEN))
            .await
            .error_code(),
        "api_key_not_found"
    );
}

/// The data lines of a stream, each without `id` and `created` (which differ per answer).
fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            let mut v: Value = serde_json::from_str(d).unwrap_or(Value::String(d.to_string()));
            if let Some(o) = v.as_object_mut() {
                o.remove("id");
                o.remove("created");
            }
            v
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_metered_from_the_model_servers_usage_streams_included() {
    let Some(app) = serving(Backend::Sqlite, "echo/tok").await else {
        return;
    };
    let (id, key) = make_key(&app, json!({"name": "tokens", "tokens_per_minute": 200})).await;

    // A JSON answer: its usage is counted exactly.
    let r = post_chat(&app.base, Some(&key), &chat("echo/tok")).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let plain = answer["usage"]["prompt_tokens"].as_u64().unwrap()
        + answer["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(plain > 0, "{answer}");
    wait_listed(&app.base, &id, "the answer's tokens", |k| {
        k["tokens_last_minute"] == plain
    })
    .await;
    // A key without a request limit still shows its requests.
    assert_eq!(listed(&app.base, &id).await["requests_last_minute"], 1);

    // A stream that asks for usage gets it; one that does not gets the same stream without
    // it, and is metered all the same.
    let mut body = chat("echo/tok");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let asked = post_chat(&app.base, Some(&key), &body)
        .await
        .text()
        .await
        .unwrap();
    let asked = events(&asked);
    let usage = asked
        .iter()
        .find(|e| !e["usage"].is_null())
        .map(|e| e["usage"].clone())
        .expect("the usage chunk");
    let streamed =
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
    body.as_object_mut().unwrap().remove("stream_options");
    let r = post_chat(&app.base, Some(&key), &body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("usage"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
    let expected: Vec<Value> = asked.into_iter().filter(|e| e["usage"].is_null()).collect();
    assert_eq!(
        events(&text),
        expected,
        "the client's stream is as if usage had not been asked"
    );
    let total = plain + 2 * streamed;
    wait_listed(&app.base, &id, "the streams' tokens", |k| {
        k["tokens_last_minute"] == total
    })
    .await;

    // Over the token limit: 429 naming it.
    let key2 = {
        let (id2, key2) = make_key(
            &app,
            json!({"name": "small", "tokens_per_minute": plain.saturating_sub(1).max(1)}),
        )
        .await;
        assert_eq!(
            post_chat(&app.base, Some(&key2), &chat("echo/tok"))
                .await
                .status(),
            200
        );
        wait_listed(&app.base, &id2, "the answer's tokens", |k| {
            k["tokens_last_minute"] == plain
        })
        .await;
        key2
    };
    let r = post_chat(&app.base, Some(&key2), &chat("echo/tok")).await;
    assert!(r.headers().contains_key("retry-after"));
    let (status, code, body) = code_of(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(body["error"]["limit"], "tokens_per_minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_keys_limit_and_hear_its_revocation_at_once() {
    let Some(a) = serving(Backend::Postgres, "echo/twin").await else {
        return;
    };
    // A second control plane on the same database.
    let b = skylaunch::app::Running::start(a.config.clone())
        .await
        .expect("the second process starts");
    let b_base = b.base_url();
    let (id, key) = make_key(&a, json!({"name": "shared", "requests_per_minute": 4})).await;
    // B knows the key (it refuses a request without one: /v1 is closed there too) and routes
    // the model (GET /v1/models counts against no limit).
    let client = reqwest::Client::new();
    let mut seen = false;
    for _ in 0..150 {
        let models = |key: Option<&str>| {
            let mut req = client.get(format!("{b_base}/v1/models"));
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            req.send()
        };
        let keyless = models(None).await.unwrap().status();
        let r = models(Some(&key)).await.unwrap();
        if keyless == StatusCode::UNAUTHORIZED
            && r.status() == 200
            && r.text().await.unwrap().contains("echo/twin")
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "B never served echo/twin to the key");

    // Four requests through A use up the limit; B learns of them and refuses the fifth.
    for i in 0..4 {
        assert_eq!(
            post_chat(&a.base, Some(&key), &chat("echo/twin"))
                .await
                .status(),
            200,
            "request {i}"
        );
    }
    wait_listed(&b_base, &id, "A's requests on B", |k| {
        k["requests_last_minute"] == 4
    })
    .await;
    let (status, code, _) = code_of(post_chat(&b_base, Some(&key), &chat("echo/twin")).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );

    // Revoked through B: A refuses it as soon as it hears (bounded wait, no request lands).
    let r = client
        .delete(format!("{b_base}/admin/api-keys/{id}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut refused = false;
    for _ in 0..50 {
        let r = a.get("/v1/models", Some(&key)).await;
        if r.error_code() == "api_key_revoked" {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "A still takes the revoked key");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_key_recovers_when_its_retry_after_has_passed() {
    let Some(app) = serving(Backend::Sqlite, "echo/rec").await else {
        return;
    };
    // One request a minute, and a token limit one answer passes.
    let (_, by_requests) = make_key(&app, json!({"name": "rpm", "requests_per_minute": 1})).await;
    let (tokens_id, by_tokens) =
        make_key(&app, json!({"name": "tpm", "tokens_per_minute": 1})).await;
    assert_eq!(
        post_chat(&app.base, Some(&by_requests), &chat("echo/rec"))
            .await
            .status(),
        200
    );
    assert_eq!(
        post_chat(&app.base, Some(&by_tokens), &chat("echo/rec"))
            .await
            .status(),
        200
    );
    wait_listed(&app.base, &tokens_id, "the answer's tokens", |k| {
        k["tokens_last_minute"].as_u64().unwrap_or(0) > 1
    })
    .await;
    let mut waits = Vec::new();
    for key in [&by_requests, &by_tokens] {
        let r = post_chat(&app.base, Some(key), &chat("echo/rec")).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let s: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=120).contains(&s), "{s}");
        waits.push(s);
    }
    // Nothing more is sent meanwhile: once Retry-After has passed, each key is let in again.
    tokio::time::sleep(Duration::from_secs(*waits.iter().max().unwrap())).await;
    for key in [&by_requests, &by_tokens] {
        let r = post_chat(&app.base, Some(key), &chat("echo/rec")).await;
        assert_eq!(r.status(), 200, "the key recovered");
    }
}
