use super::*;

fn meter(stream: bool, added_usage: bool) -> (Meter, Arc<Keys>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = rt.block_on(async {
        let store = crate::store::Store::connect(&crate::store::Store::sqlite_url_for(dir.path()))
            .await
            .unwrap();
        Keys::load(store, vec![], Arc::default()).await.unwrap()
    });
    let meter = Meter::new(
        keys.clone(),
        Caller::Open,
        Arc::from("m"),
        Arc::from("d"),
        &StreamAsk {
            stream,
            added_usage,
        },
    );
    (meter, keys, dir)
}

/// Feeds `pieces` and returns what went on, and the usage found.
fn run(meter: &mut Meter, pieces: &[&[u8]]) -> (Vec<u8>, Option<Counts>) {
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(&meter.feed(Bytes::copy_from_slice(p)));
    }
    if let Some(held) = meter.finish() {
        out.extend_from_slice(&held);
    }
    (out, meter.usage)
}

const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n\
data: [DONE]\n\n";

fn without_usage_chunk() -> Vec<u8> {
    let text = std::str::from_utf8(STREAM).unwrap();
    let mut out = String::new();
    for event in text.split_inclusive("\n\n") {
        if !event.contains("usage") {
            out.push_str(event);
        }
    }
    out.into_bytes()
}

#[test]
fn a_stream_the_client_did_not_ask_usage_for_loses_only_the_usage_chunk() {
    // Split at every place: the result is the same.
    for cut in 1..STREAM.len() {
        let (mut m, _keys, _dir) = meter(true, true);
        let (out, usage) = run(&mut m, &[&STREAM[..cut], &STREAM[cut..]]);
        assert_eq!(out, without_usage_chunk(), "cut at {cut}");
        let usage = usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 3));
    }
}

#[test]
fn a_stream_that_asked_for_usage_passes_unchanged() {
    let (mut m, _keys, _dir) = meter(true, false);
    let (out, usage) = run(&mut m, &[&STREAM[..50], &STREAM[50..]]);
    assert_eq!(out, STREAM);
    assert_eq!(usage.unwrap().tokens(), 10);
    // Announced length: nothing is taken out even when usage was added.
    let (mut m, _keys, _dir) = meter(true, true);
    m.keep_bytes();
    let (out, _) = run(&mut m, &[STREAM]);
    assert_eq!(out, STREAM);
}

#[test]
fn a_json_answer_is_read_from_its_end() {
    let big = "x".repeat(100_000);
    let body = format!(
        "{{\"id\":\"1\",\"choices\":[{{\"text\":\"{big}\"}}],\"usage\": {{\"prompt_tokens\": 12, \"completion_tokens\": 30}}}}"
    );
    let (mut m, _keys, _dir) = meter(false, false);
    let pieces: Vec<&[u8]> = body.as_bytes().chunks(7_000).collect();
    let (out, _) = run(&mut m, &pieces);
    assert_eq!(out, body.as_bytes());
    let usage = m.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (12, 30));
    // No usage, or a null one: nothing counted but the request.
    for body in [
        "{\"choices\":[]}",
        "{\"usage\":null}",
        "not json \"usage\": {",
    ] {
        let (mut m, _keys, _dir) = meter(false, false);
        run(&mut m, &[body.as_bytes()]);
        assert_eq!(m.usage, None, "{body}");
    }
}

#[test]
fn an_overlong_line_passes_unread_and_memory_stays_bounded() {
    let (mut m, _keys, _dir) = meter(true, true);
    let long = vec![b'a'; MAX_LINE + 10];
    let mut stream = b"data: ".to_vec();
    stream.extend_from_slice(&long);
    stream.extend_from_slice(b"\n\n");
    stream.extend_from_slice(STREAM);
    let pieces: Vec<&[u8]> = stream.chunks(10_000).collect();
    let (out, usage) = run(&mut m, &pieces);
    let mut expected = b"data: ".to_vec();
    expected.extend_from_slice(&long);
    expected.extend_from_slice(b"\n\n");
    expected.extend_from_slice(&without_usage_chunk());
    assert_eq!(out, expected);
    assert_eq!(usage.unwrap().tokens(), 10);
}

#[test]
fn usage_is_asked_for_only_when_streaming_without_it() {
    let body = br#"{"model":"m","stream":true,"stream_options":{"foo":1},"messages":[]}"#;
    let (ask, rewritten) = ask_for_usage(true, false, body);
    assert!(ask.stream && ask.added_usage);
    let v: serde_json::Value = serde_json::from_slice(&rewritten.unwrap()).unwrap();
    assert_eq!(
        v["stream_options"],
        serde_json::json!({"foo": 1, "include_usage": true})
    );
    assert_eq!(v["messages"], serde_json::json!([]));
    let (ask, rewritten) = ask_for_usage(true, true, body);
    assert!(!ask.added_usage && rewritten.is_none());
    let (ask, rewritten) = ask_for_usage(false, false, body);
    assert!(!ask.stream && rewritten.is_none());
}

#[test]
fn a_usage_objects_counts_are_read_by_hand() {
    let read = |t: &str| usage_object(t.as_bytes()).map(|c| (c.prompt_tokens, c.completion_tokens));
    assert_eq!(
        read(r#" {"prompt_tokens": 5, "total_tokens": 9, "completion_tokens":4}"#),
        Some((5, 4))
    );
    assert_eq!(
        read(
            r#"{"prompt_tokens_details": {"cached_tokens": 3, "x": "}{\"]"}, "prompt_tokens": 7, "completion_tokens": 2}, "id": 1"#
        ),
        Some((7, 2))
    );
    // Embeddings: no completion.
    assert_eq!(
        read(r#"{"prompt_tokens": 12, "total_tokens": 12}"#),
        Some((12, 0))
    );
    assert_eq!(
        read(r#"{"prompt_tokens": 5"#),
        Some((5, 0)),
        "cut short: what it has"
    );
    for bad in [
        "null",
        r#"{"prompt_tokens": 99999999999999999999999}"#,
        r#"{"completion_tokens": 1}"#,
        "",
        "[1]",
        r#"{"prompt_tokens": "5"}"#,
    ] {
        assert_eq!(read(bad), None, "{bad}");
    }
}

#[test]
fn usage_further_from_the_end_is_found_too() {
    for pad in [0, 500, 505, 506, 507, 600, 5_000] {
        let body = format!(
            "{{\"usage\": {{\"prompt_tokens\": 3, \"completion_tokens\": 4}}, \"x\": \"{}\"}}",
            "y".repeat(pad)
        );
        assert_eq!(
            usage_in_json(body.as_bytes()).map(|c| c.tokens()),
            Some(7),
            "{pad}"
        );
    }
}
