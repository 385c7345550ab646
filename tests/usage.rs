//! Usage and cost end to end: requests through the real load balancer to a real echo replica
//! (the local provider, the real agent), metered from the echo server's own `usage`, read back
//! by `GET /admin/usage` by model, key and deployment, with dollars from a node's placement
//! price (a bring-your-own L4 on spot, registered as an agent does), and in `/metrics`.

mod common;
mod standins;

use std::time::Duration;

use common::{Backend, TestApp, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn usage(app: &TestApp, query: &str) -> Value {
    let r = app
        .get(&format!("/admin/usage{query}"), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

fn group<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == name)
        .unwrap_or_else(|| panic!("no group {name}: {report:#}"))
}

fn tokens(usage: &Value) -> (u64, u64) {
    (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    )
}

async fn chat(app: &TestApp, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = app.client.post(app.url("/v1/chat/completions")).json(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let r = req.send().await.expect("the load balancer answers");
    assert_eq!(r.status(), 200);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reads_back_exact_tokens_and_dollars_from_placement_prices() {
    let Some(app) = standins::local_app(Backend::Sqlite, |_| {}).await else {
        return;
    };
    app.create_deployment(
        &json!({"name": "one", "model": "echo/one", "provider": "local", "replicas": 1}),
    )
    .await;
    app.wait_deployment("one", "its replica ready", |d| d["replicas"]["ready"] == 1)
        .await;
    // A node on a priced placement: an L4 on spot, as its agent registers it.
    let before = skylaunch::clock::now_ms();
    let (priced, _) = app.ready_node("priced").await;

    // One request while /v1 is open, two with a key, and a stream that asks for its usage.
    let body = json!({"model": "echo/one", "messages": [{"role": "user", "content": "count these tokens please"}]});
    let mut expected = (0, 0);
    let mut add = |u: &Value| {
        let (p, c) = tokens(u);
        expected = (expected.0 + p, expected.1 + c);
    };
    let answer: Value = chat(&app, None, &body).await.json().await.unwrap();
    add(&answer["usage"]);
    let r = app
        .post(
            "/admin/api-keys",
            Some(ADMIN_TOKEN),
            &json!({"name": "team"}),
        )
        .await;
    let key = r.body["key"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let answer: Value = chat(&app, Some(&key), &body).await.json().await.unwrap();
        add(&answer["usage"]);
    }
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let text = chat(&app, Some(&key), &stream).await.text().await.unwrap();
    let last: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| !e["usage"].is_null())
        .expect("the usage chunk");
    add(&last["usage"]);

    // Usage is written every second: read back (bounded) until all four are in.
    let mut report = Value::Null;
    for _ in 0..100 {
        report = usage(&app, "?group_by=model").await;
        if report["total"]["requests"] == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(report["total"]["requests"], 4, "{report:#}");
    let one = group(&report, "echo/one");
    assert_eq!(tokens(one), expected, "exactly the echo server's usage");
    assert_eq!(one["usd"], 0.0, "this machine costs nothing per hour");
    assert_eq!(one["hourly_usd"], 0.0);
    assert_eq!(one["usd_per_million_tokens"], 0.0);

    // The priced node: an L4 on spot at the catalogue's price, for as long as it has run.
    let l4_spot = 0.80 * 0.35;
    let node_model = group(&report, "test/model");
    assert_eq!(node_model["requests"], 0);
    assert!((node_model["hourly_usd"].as_f64().unwrap() - l4_spot).abs() < 1e-6);
    let hours = node_model["gpu_hours"].as_f64().unwrap();
    let ran = (skylaunch::clock::now_ms() - before) as f64 / 3.6e6;
    assert!(hours > 0.0 && hours <= ran, "{hours} GPU-hours in {ran} h");
    let usd = node_model["usd"].as_f64().unwrap();
    assert!((usd - hours * l4_spot).abs() < 1e-5, "{usd} for {hours} h");
    assert!(report["total"]["usd"].as_f64().unwrap() >= usd - 1e-6);
    assert_eq!(node_model["usd_per_million_tokens"], Value::Null);
    // The series adds up to the totals.
    let points = report["series"]["points"].as_array().unwrap();
    let summed: u64 = points
        .iter()
        .map(|p| p["prompt_tokens"].as_u64().unwrap() + p["completion_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(summed, expected.0 + expected.1);
    assert!(points.iter().any(|p| p["usd"].as_f64().unwrap() > 0.0));

    // By key: the team's three requests, the open one, and the priced node's idle cost.
    let by_key = usage(&app, "?group_by=key").await;
    let team = group(&by_key, "team");
    assert_eq!(team["requests"], 3);
    assert_eq!(team["key_id"], r.body["id"]);
    assert_eq!(group(&by_key, "(environment or open)")["requests"], 1);
    assert!(
        group(&by_key, "(idle: no requests)")["usd"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // By deployment: the deployment, and the node of none.
    let by_deployment = usage(&app, "?group_by=deployment").await;
    assert_eq!(group(&by_deployment, "one")["requests"], 4);
    assert!(group(&by_deployment, "(none)")["usd"].as_f64().unwrap() > 0.0);

    // A period before anything ran: nothing, and the priced node costs nothing in it.
    let old = usage(&app, "?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z").await;
    assert_eq!(old["total"]["requests"], 0);
    assert_eq!(old["total"]["usd"], 0.0);
    assert_eq!(old["series"]["bucket_s"], 3600);
    // Bad input names its field.
    for (query, field) in [
        ("?group_by=team", "group_by"),
        ("?from=yesterday", "from"),
        ("?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ] {
        let r = app
            .get(&format!("/admin/usage{query}"), Some(ADMIN_TOKEN))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(r.error_code(), "invalid_query");
        assert_eq!(r.body["error"]["field"], field, "{query}");
    }

    // In /metrics: the counters (once written) and the per-model histograms.
    let metrics = app.metrics().await;
    let prompt = common::metric_value(
        &metrics,
        "skylaunch_usage_tokens_total{model=\"echo/one\",deployment=\"one\",key=\"team\",type=\"prompt\"}",
    );
    let (p_one, _) = tokens(&answer["usage"]);
    assert!(prompt.is_some_and(|p| p >= 2.0 * p_one as f64), "{metrics}");
    for series in [
        "skylaunch_prompt_tokens_count{model=\"echo/one\"}",
        "skylaunch_completion_tokens_count{model=\"echo/one\"}",
        "skylaunch_output_tokens_per_second_count{model=\"echo/one\"}",
    ] {
        assert_eq!(
            common::metric_value(&metrics, series),
            Some(4.0),
            "{series}"
        );
    }
    assert!(
        common::metric_value(
            &metrics,
            "skylaunch_inter_token_latency_seconds_count{model=\"echo/one\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "a stream's chunks are timed"
    );
    assert_eq!(
        common::metric_value(
            &metrics,
            "skylaunch_time_to_first_token_seconds_count{model=\"echo/one\"}"
        ),
        Some(1.0),
        "the one stream's first token"
    );

    // A graceful restart loses nothing counted.
    let app = app.restart().await;
    assert_eq!(usage(&app, "").await["total"]["requests"], 4);
    let _ = priced;
}
