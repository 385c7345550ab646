//! A deployment's routing policy end to end: real echo replicas (the local provider, the real
//! agent) behind the real load balancer. Every answer names the node that served it in
//! `X-Skylaunch-Node`, which is how these tests see where each request went.

mod common;
mod standins;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Backend, TestApp};
use serde_json::{json, Value};

async fn app() -> Option<TestApp> {
    standins::local_app(Backend::Sqlite, |config| {
        config.replica_drain_timeout = Duration::from_secs(10);
    })
    .await
}

/// A chat body: a long system prompt (one per `system`), then the turns.
fn chat(model: &str, system: usize, turns: &[String]) -> Value {
    let mut messages = vec![json!({"role": "system", "content":
        format!("You are assistant number {system}. ").repeat(30)})];
    for (i, t) in turns.iter().enumerate() {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": t}));
    }
    json!({"model": model, "messages": messages})
}

/// Sends a chat request; the node that answered it.
async fn node_of(app: &TestApp, body: &Value, headers: &[(&str, &str)]) -> String {
    let mut req = app.client.post(app.url("/v1/chat/completions")).json(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let r = req.send().await.expect("the load balancer answers");
    assert_eq!(r.status(), 200);
    r.headers()
        .get("x-skylaunch-node")
        .expect("every forwarded answer names its node")
        .to_str()
        .unwrap()
        .to_string()
}

async fn ready(app: &TestApp, name: &str, n: usize) -> BTreeSet<String> {
    let d = app
        .wait_deployment(name, "its replicas ready", |d| {
            d["replicas"]["ready"] == n && d["nodes"].as_array().unwrap().len() == n
        })
        .await;
    common::node_ids(&d).into_iter().collect()
}

/// Sends the first turn of a conversation until the policy holds it (the reconciler sets a
/// deployment's route on its next pass); bounded. Before that, least-load picks among idle
/// replicas at random, so three equal answers in a row happen by chance one time in nine; ten
/// (one in 3^9) do not.
async fn until_sticky(app: &TestApp, body: &Value, headers: &[(&str, &str)]) {
    'attempt: for _ in 0..100 {
        let first = node_of(app, body, headers).await;
        for _ in 0..9 {
            if node_of(app, body, headers).await != first {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'attempt;
            }
        }
        return;
    }
    panic!("the routing policy never took hold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_keeps_conversations_on_their_replica_and_lets_load_win_when_it_must() {
    let Some(app) = app().await else { return };
    app.create_deployment(&json!({
        "name": "pa", "model": "echo/pa", "provider": "local", "replicas": 3,
        "routing": {"policy": "prefix_affinity", "max_in_flight_gap": 2},
    }))
    .await;
    let nodes = ready(&app, "pa", 3).await;
    let turn = |i: usize| format!("question {i}");
    until_sticky(&app, &chat("echo/pa", 999, &[turn(0)]), &[]).await;

    // Twelve conversations: each keeps its replica over three turns; together they use more
    // than one replica.
    let mut placed = BTreeMap::new();
    for c in 0..12 {
        let first = node_of(&app, &chat("echo/pa", c, &[turn(0)]), &[]).await;
        for t in [3, 5] {
            let turns: Vec<String> = (0..t).map(turn).collect();
            let later = node_of(&app, &chat("echo/pa", c, &turns), &[]).await;
            assert_eq!(later, first, "conversation {c}, turn {t}, moved");
        }
        assert!(nodes.contains(&first));
        placed.insert(c, first);
    }
    let used: BTreeSet<&String> = placed.values().collect();
    assert!(
        used.len() > 1,
        "distinct prefixes spread by load: {placed:?}"
    );

    // A replica that leaves (3 → 2) moves only its own conversations.
    app.scale_deployment("pa", 2).await;
    let left = ready(&app, "pa", 2).await;
    for (c, was) in &placed {
        let turns: Vec<String> = (0..7).map(turn).collect();
        let now = node_of(&app, &chat("echo/pa", *c, &turns), &[]).await;
        if left.contains(was) {
            assert_eq!(
                &now, was,
                "conversation {c} moved though its replica stayed"
            );
        } else {
            assert!(left.contains(&now));
        }
    }

    // An overloaded replica loses affinity: twelve requests of one conversation at once to
    // replicas answering slowly (the echo server takes 1 s per answer);
    // past 2 in flight beyond the other replica and twice its load, load wins.
    let mut spec = app.get_deployment("pa").await.body["spec"].clone();
    spec["envs"] = json!({"ECHO_DELAY_MS": "1000"});
    let r = app.put_admin("/admin/deployments/pa", &spec).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rolled = app
        .wait_deployment("pa", "the slow revision ready", |d| {
            d["replicas"]["ready"] == 2
                && d["nodes"].as_array().unwrap().len() == 2
                && d["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|n| n["revision"] == d["revision"])
        })
        .await;
    assert_eq!(rolled["revision"], 2);
    let body = chat("echo/pa", 77, &[turn(0)]);
    until_sticky(&app, &body, &[]).await;
    let sends: Vec<_> = (0..12).map(|_| node_of(&app, &body, &[])).collect();
    let served = futures_util::future::join_all(sends).await;
    let mut by_node: BTreeMap<&String, usize> = BTreeMap::new();
    for n in &served {
        *by_node.entry(n).or_default() += 1;
    }
    assert_eq!(
        by_node.len(),
        2,
        "load won on the overloaded replica: {by_node:?}"
    );
    assert!(
        by_node.values().all(|n| *n >= 3),
        "each replica took its share: {by_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stick_to_a_replica_and_a_policy_change_makes_no_new_revision() {
    let Some(app) = app().await else { return };
    let created = app
        .create_deployment(&json!({
            "name": "ss", "model": "echo/ss", "provider": "local", "replicas": 3,
        }))
        .await;
    assert_eq!(created["spec"]["routing"]["policy"], "least_load");
    ready(&app, "ss", 3).await;
    // Bad settings are refused with their field, and change nothing.
    let mut spec = app.get_deployment("ss").await.body["spec"].clone();
    for (routing, field) in [
        (
            json!({"policy": "session", "session_header": "Cookie"}),
            "routing.session_header",
        ),
        (
            json!({"policy": "least_load", "max_in_flight_gap": 3}),
            "routing.max_in_flight_gap",
        ),
        (
            json!({"policy": "prefix_affinity", "min_prefix_chars": 1}),
            "routing.min_prefix_chars",
        ),
    ] {
        spec["routing"] = routing;
        let r = app.put_admin("/admin/deployments/ss", &spec).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{}", r.body);
    }
    // The session policy, on a custom header: no new revision, the same replicas.
    spec["routing"] = json!({"policy": "session", "session_header": "X-Conversation"});
    let r = app.put_admin("/admin/deployments/ss", &spec).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["revision"], 1, "{}", r.body);
    let body = chat("echo/ss", 1, &["hi".to_string()]);
    until_sticky(&app, &body, &[("X-Conversation", "warm-up")]).await;
    let mut placed = BTreeMap::new();
    for s in 0..20 {
        let id = format!("conversation-{s}");
        let first = node_of(&app, &body, &[("x-conversation", &id)]).await;
        for _ in 0..2 {
            assert_eq!(
                node_of(&app, &body, &[("X-Conversation", &id)]).await,
                first
            );
        }
        placed.insert(s, first);
    }
    let used: BTreeSet<&String> = placed.values().collect();
    assert!(
        used.len() > 1,
        "sessions spread over the replicas: {placed:?}"
    );
    // The deployment still runs revision 1 on its three replicas.
    let d = app.get_deployment("ss").await.body;
    assert_eq!(d["revision"], 1);
    assert_eq!(d["replicas"]["ready"], 3);
}
