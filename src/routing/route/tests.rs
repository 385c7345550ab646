use super::*;

fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            Arc::new(Endpoint::new(
                &format!("node-{i}"),
                &format!("n{i}"),
                &format!("http://127.0.0.1:{}", 9000 + i),
                1.0,
            ))
        })
        .collect()
}

fn refs(all: &[Arc<Endpoint>]) -> Vec<&Arc<Endpoint>> {
    all.iter().collect()
}

fn affinity() -> Route {
    Route::new(&RoutingPolicy {
        policy: RoutePolicyKind::PrefixAffinity,
        ..RoutingPolicy::default()
    })
    .unwrap()
}

/// A chat request: a system prompt of `system` repeated, then the turns.
fn chat(system: &str, turns: &[&str]) -> Vec<u8> {
    let mut messages = vec![serde_json::json!({"role": "system", "content": system.repeat(40)})];
    for (i, t) in turns.iter().enumerate() {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": t}));
    }
    serde_json::to_vec(&serde_json::json!({"model": "m", "messages": messages})).unwrap()
}

/// Sends one request through the route as the proxy does: its preference, else `fallback`.
fn route_one(
    route: &Route,
    usable: &[&Arc<Endpoint>],
    body: &[u8],
    fallback: usize,
) -> (String, Preference) {
    let p = route.prefer(usable, &[], body);
    let chosen = p
        .endpoint
        .clone()
        .unwrap_or_else(|| usable[fallback].clone());
    route.learn(&p.blocks, &chosen);
    (chosen.node_id.clone(), p)
}

#[test]
fn a_later_turn_shares_the_earlier_turns_blocks() {
    let first = prompt_blocks(&chat("You are a pirate. ", &["hello"]));
    let second = prompt_blocks(&chat("You are a pirate. ", &["hello", "Arr!", "more"]));
    assert!(first.len() >= 10, "{}", first.len());
    assert_eq!(first[..first.len()], second[..first.len()]);
    let other = prompt_blocks(&chat("You are a poet. ", &["hello"]));
    assert_ne!(first[0], other[0]);
    // Completions' prompts, and content as parts, count too; anything else has no blocks.
    let prompt =
        serde_json::to_vec(&serde_json::json!({"model": "m", "prompt": "x".repeat(200)})).unwrap();
    assert_eq!(prompt_blocks(&prompt).len(), 3);
    let parts = serde_json::to_vec(&serde_json::json!({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "y".repeat(200)}]}]}))
    .unwrap();
    assert_eq!(prompt_blocks(&parts).len(), 3);
    assert!(prompt_blocks(b"not json").is_empty());
    // Bounded: a huge prompt is looked at up to 16 KiB.
    let huge =
        serde_json::to_vec(&serde_json::json!({"model": "m", "prompt": "z".repeat(1 << 20)}))
            .unwrap();
    assert_eq!(prompt_blocks(&huge).len(), MAX_BLOCKS);
}

#[test]
fn a_conversation_stays_on_its_replica_and_new_prefixes_go_by_load() {
    let all = endpoints(3);
    let usable = refs(&all);
    let route = affinity();
    // Its first request: no preference, load picks replica 1.
    let (first, p) = route_one(&route, &usable, &chat("Pirate. ", &["hello"]), 1);
    assert!(p.endpoint.is_none());
    assert_eq!(first, "node-1");
    // Every later turn goes there, whatever load would pick.
    for (fallback, turns) in [
        (0, vec!["hello", "Arr", "again"]),
        (2, vec!["hello", "Arr", "again", "Arr", "bye"]),
    ] {
        let (node, p) = route_one(&route, &usable, &chat("Pirate. ", &turns), fallback);
        assert!(p.endpoint.is_some());
        assert_eq!(node, "node-1");
    }
    // Another system prompt has no remembered prefix: load decides.
    let (node, p) = route_one(&route, &usable, &chat("Poet. ", &["hello"]), 2);
    assert!(p.endpoint.is_none());
    assert_eq!(node, "node-2");
    // A prefix shorter than min_prefix_chars (256) keeps no affinity.
    let short =
        serde_json::to_vec(&serde_json::json!({"model": "m", "prompt": "q".repeat(200)})).unwrap();
    route_one(&route, &usable, &short, 0);
    assert!(route.prefer(&usable, &[], &short).endpoint.is_none());
}

#[test]
fn an_overloaded_replica_loses_affinity() {
    let all = endpoints(2);
    let usable = refs(&all);
    let route = affinity();
    let body = chat("Pirate. ", &["hello"]);
    route_one(&route, &usable, &body, 0);
    // 5 in flight against 0: beyond the gap of 4 and 1.5 times the load.
    all[0].in_flight.store(5, Ordering::Relaxed);
    let p = route.prefer(&usable, &[], &body);
    assert!(p.endpoint.is_none() && p.overloaded);
    // 5 against 2: more than 1.5 times the load, but not more than 4 beyond it: it keeps
    // affinity.
    all[1].in_flight.store(2, Ordering::Relaxed);
    let p = route.prefer(&usable, &[], &body);
    assert_eq!(p.endpoint.unwrap().node_id, "node-0");
}

#[test]
fn a_replica_that_leaves_moves_only_its_own_prefixes() {
    let all = endpoints(3);
    let route = affinity();
    let systems: Vec<String> = (0..30).map(|i| format!("System prompt {i}. ")).collect();
    let mut placed = Vec::new();
    for (i, s) in systems.iter().enumerate() {
        let (node, _) = route_one(&route, &refs(&all), &chat(s, &["hi"]), i % 3);
        placed.push(node);
    }
    // node-2 leaves.
    let left = refs(&all[..2]);
    for (i, s) in systems.iter().enumerate() {
        let p = route.prefer(&left, &[], &chat(s, &["hi", "ho", "again"]));
        match p.endpoint {
            Some(e) => assert_eq!(e.node_id, placed[i], "prefix {i} moved"),
            None => assert_eq!(placed[i], "node-2", "prefix {i} lost its replica"),
        }
    }
    // A replica joining takes none of the remembered prefixes.
    let joined = endpoints(4);
    let p = route.prefer(&refs(&joined), &[], &chat(&systems[0], &["hi"]));
    assert_eq!(p.endpoint.unwrap().node_id, placed[0]);
}

#[test]
fn sessions_stick_and_a_leaving_replica_moves_only_its_sessions() {
    let route = Route::new(&RoutingPolicy {
        policy: RoutePolicyKind::Session,
        session_header: Some("X-Conversation".into()),
        ..RoutingPolicy::default()
    })
    .unwrap();
    let all = endpoints(4);
    let pick = |usable: &[&Arc<Endpoint>], session: &str| {
        let hints: [(&[u8], &[u8]); 2] = [
            (b"x-request-id", b"abc"),
            (b"X-CONVERSATION", session.as_bytes()),
        ];
        route
            .prefer(usable, &hints, b"{}")
            .endpoint
            .map(|e| e.node_id.clone())
    };
    let before: Vec<String> = (0..200)
        .map(|i| pick(&refs(&all), &format!("s{i}")).unwrap())
        .collect();
    // Spread over every replica, the same each time.
    for n in 0..4 {
        let share = before.iter().filter(|b| **b == format!("node-{n}")).count();
        assert!(share > 20, "node-{n} got {share} of 200");
    }
    assert_eq!(pick(&refs(&all), "s7").unwrap(), before[7]);
    // node-3 leaves: only its sessions move.
    for (i, was) in before.iter().enumerate() {
        let now = pick(&refs(&all[..3]), &format!("s{i}")).unwrap();
        if was != "node-3" {
            assert_eq!(&now, was, "session {i} moved");
        }
    }
    // No header: load decides.
    assert!(route.prefer(&refs(&all), &[], b"{}").endpoint.is_none());
}

#[test]
fn the_index_stays_bounded() {
    let mut index = PrefixIndex::default();
    for i in 0..(INDEX_CAPACITY as u64 * 3) {
        index.insert(&[i], 1);
    }
    assert!(index.current.len() + index.previous.len() <= INDEX_CAPACITY);
    // The newest are remembered.
    assert_eq!(index.get(INDEX_CAPACITY as u64 * 3 - 1), Some(1));
}

#[test]
fn settings_are_checked_with_their_field() {
    let bad = |json: serde_json::Value| {
        serde_json::from_value::<RoutingPolicy>(json)
            .unwrap()
            .check()
            .unwrap_err()
            .0
    };
    assert_eq!(
        bad(serde_json::json!({"policy": "least_load", "min_prefix_chars": 512})),
        "routing.min_prefix_chars"
    );
    assert_eq!(
        bad(serde_json::json!({"policy": "prefix_affinity", "min_prefix_chars": 10})),
        "routing.min_prefix_chars"
    );
    assert_eq!(
        bad(serde_json::json!({"policy": "prefix_affinity", "max_load_ratio": 0.5})),
        "routing.max_load_ratio"
    );
    assert_eq!(
        bad(serde_json::json!({"policy": "session", "session_header": "Authorization"})),
        "routing.session_header"
    );
    assert_eq!(
        bad(serde_json::json!({"policy": "prefix_affinity", "session_header": "X-Id"})),
        "routing.session_header"
    );
    assert!(
        serde_json::from_value::<RoutingPolicy>(serde_json::json!({"policy": "random"})).is_err()
    );
    let fine: RoutingPolicy = serde_json::from_value(serde_json::json!({
        "policy": "prefix_affinity", "min_prefix_chars": 512, "max_in_flight_gap": 4,
        "max_load_ratio": 1.5}))
    .unwrap();
    assert!(fine.check().is_ok());
}
