//! The echo server's answers and their usage, its latency knobs, its vLLM-like service model
//! and that model's prefix cache.

use super::engine::Prefill;
use super::*;
use std::time::Instant;

async fn start(options: Options) -> String {
    start_with_prefix_cache(options, 0).await
}

async fn start_with_prefix_cache(mut options: Options, prefix_cache_tokens: usize) -> String {
    options.service.prefix_cache_tokens = prefix_cache_tokens;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router_with_options("m", None, &options);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A streamed chat answer as a client sees it.
struct Timed {
    head: Duration,
    first_data: Duration,
    end: Duration,
    data: Vec<String>,
}

async fn stream(url: &str, words: usize, max_tokens: u64) -> Timed {
    let body = json!({"model": "m", "stream": true, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": vec!["w"; words].join(" ")}]});
    let started = Instant::now();
    let mut res = post(url, body).await;
    let head = started.elapsed();
    let (mut text, mut first_data) = (String::new(), None);
    while let Some(bytes) = res.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&bytes).unwrap());
        if text.contains("data:") {
            first_data.get_or_insert(started.elapsed());
        }
    }
    let data = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect();
    Timed {
        head,
        first_data: first_data.unwrap(),
        end: started.elapsed(),
        data,
    }
}

async fn queue(url: &str) -> (f64, f64) {
    (
        metric(url, "vllm:num_requests_running").await,
        metric(url, "vllm:num_requests_waiting").await,
    )
}

/// A metric's value for model `m`, in vLLM's format.
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}{{model_name=\"m\"}} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

fn content(data: &str) -> String {
    let v: Value = serde_json::from_str(data).unwrap();
    v["choices"][0]["delta"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn the_service_model_queues_past_max_seqs_and_publishes_the_queue_as_vllm_does() {
    // One sequence at a time; 2 ms of prefill per prompt token, 3 ms per further token.
    let url = start(Options {
        service: ServiceModel {
            prefill_us_per_token: 2000.0,
            decode_us_per_token: 3000.0,
            max_seqs: 1,
            prefix_cache_tokens: 0,
        },
        ..Options::default()
    })
    .await;
    // A: 10 prompt tokens (20 ms), 101 output tokens (300 ms after the first).
    let a = tokio::spawn({
        let url = url.clone();
        async move { stream(&url, 10, 101).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b_sent = Instant::now();
    let b = tokio::spawn({
        let url = url.clone();
        async move { stream(&url, 10, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        queue(&url).await,
        (1.0, 1.0),
        "A runs, B waits for its slot"
    );
    let (a, b) = (a.await.unwrap(), b.await.unwrap());

    assert!(
        a.first_data >= Duration::from_millis(20),
        "after the prefill"
    );
    assert!(a.end >= Duration::from_millis(320), "after decoding");
    assert_eq!(content(&a.data[0]), "echo:", "{:?}", a.data);
    assert_eq!(
        content(&a.data[1]).split_whitespace().count(),
        100,
        "max_tokens tokens in all: {:?}",
        a.data
    );
    assert!(a.data[2].contains("\"finish_reason\":\"length\""));
    assert_eq!(a.data[3], "[DONE]");
    assert_eq!(a.data.len(), 4);

    // B's first token waited for A's slot, then its own prefill; its head did not wait
    // (as vLLM sends it).
    let a_done_for_b = a.end - Duration::from_millis(50);
    assert!(
        b.first_data >= a_done_for_b.min(Duration::from_millis(250)),
        "{:?}",
        b.first_data
    );
    assert!(
        b.head + Duration::from_millis(100) < b.first_data,
        "head {:?}, first data {:?}",
        b.head,
        b.first_data
    );
    assert_eq!(
        b.data.len(),
        3,
        "one token, the finish, [DONE]: {:?}",
        b.data
    );
    assert!(b_sent.elapsed() >= Duration::from_millis(250));
    assert_eq!(queue(&url).await, (0.0, 0.0));

    // Unstreamed: the whole answer at once, with the token counts.
    let started = Instant::now();
    let whole: Value = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "m", "max_tokens": 5,
            "messages": [{"role": "user", "content": "one two three"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(6 + 12));
    assert_eq!(
        whole["choices"][0]["message"]["content"],
        "echo: one two three one"
    );
    assert_eq!(whole["usage"]["prompt_tokens"], 3);
    assert_eq!(whole["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn without_knobs_it_answers_at_once() {
    let url = start(Options::default()).await;
    let t = stream(&url, 2, 100).await;
    let words: Vec<String> = t.data.iter().take(3).map(|d| content(d)).collect();
    assert_eq!(words, ["echo: ", "w ", "w"], "{:?}", t.data);
    assert_eq!(t.data.last().unwrap(), "[DONE]");
    assert!(t.end < Duration::from_secs(2));
    assert_eq!(queue(&url).await, (0.0, 0.0));
}

#[tokio::test]
async fn it_listens_only_after_the_startup_delay() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    let listening = tokio::spawn(listen_after(addr, Duration::from_millis(300)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "refused while starting up"
    );
    let listener = listening.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(listener);
}

/// A fast service model: the answers' shape, not their timing, is under test.
fn quick_service() -> Options {
    Options {
        service: ServiceModel {
            prefill_us_per_token: 1.0,
            decode_us_per_token: 1.0,
            max_seqs: 4,
            prefix_cache_tokens: 0,
        },
        ..Options::default()
    }
}

async fn post(url: &str, body: Value) -> reqwest::Response {
    post_to(url, "/v1/chat/completions", body).await
}

async fn post_to(url: &str, path: &str, body: Value) -> reqwest::Response {
    let res = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res
}

/// A stream's `data:` payloads.
async fn stream_data(url: &str, body: Value) -> Vec<String> {
    let text = post(url, body).await.text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// A system message of 3 words and a user message of 2: 5 prompt tokens.
fn two_messages() -> Value {
    json!([{"role": "system", "content": "be a parrot"},
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]}])
}

#[tokio::test]
async fn an_answer_reports_the_prompts_words_and_the_tokens_it_made_as_usage() {
    let plain = start(Options::default()).await;
    let whole: Value = post(&plain, json!({"model": "m", "messages": two_messages()}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        whole["choices"][0]["message"]["content"],
        "echo: hello there"
    );
    assert_eq!(
        whole["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
    );

    let modelled = start(quick_service()).await;
    let whole: Value = post(
        &modelled,
        json!({"model": "m", "max_tokens": 7, "messages": two_messages()}),
    )
    .await
    .json()
    .await
    .unwrap();
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.split_whitespace().count(), 7, "{content}");
    assert_eq!(
        whole["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12})
    );
}

#[tokio::test]
async fn a_completion_and_an_embedding_report_usage() {
    let url = start(Options::default()).await;
    let completion: Value = post_to(
        &url,
        "/v1/completions",
        json!({"model": "m", "prompt": "one two"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        completion["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    );
    let embedding: Value = post_to(
        &url,
        "/v1/embeddings",
        json!({"model": "m", "input": ["one two", "three"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        embedding["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
}

/// Checks a stream asked for usage: every chunk but the last before `[DONE]` has no `usage`
/// field (as vLLM sends them); that last one has no choices and the usage.
fn assert_ends_with_usage(data: &[String], prompt_tokens: u64, completion_tokens: u64) {
    let (done, rest) = data.split_last().unwrap();
    assert_eq!(done, "[DONE]");
    let (last, chunks) = rest.split_last().unwrap();
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens})
    );
    for c in chunks {
        let c: Value = serde_json::from_str(c).unwrap();
        assert!(c.get("usage").is_none(), "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 1, "{c}");
    }
}

#[tokio::test]
async fn a_stream_asked_for_usage_ends_with_a_usage_chunk() {
    let modelled = start(quick_service()).await;
    let data = stream_data(
        &modelled,
        json!({"model": "m", "stream": true, "max_tokens": 6, "stream_options": {"include_usage": true},
            "messages": two_messages()}),
    )
    .await;
    assert_ends_with_usage(&data, 5, 6);
    // One output token: the first, the finish, the usage, [DONE].
    let data = stream_data(
        &modelled,
        json!({"model": "m", "stream": true, "max_tokens": 1, "stream_options": {"include_usage": true},
            "messages": two_messages()}),
    )
    .await;
    assert_eq!(data.len(), 4, "{data:?}");
    assert_ends_with_usage(&data, 5, 1);

    let plain = start(Options::default()).await;
    let data = stream_data(
        &plain,
        json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
            "messages": two_messages()}),
    )
    .await;
    assert_ends_with_usage(&data, 5, 3);
}

#[tokio::test]
async fn a_stream_not_asked_for_usage_has_none() {
    for (url, stream_options) in [
        (start(quick_service()).await, Value::Null),
        (start(Options::default()).await, Value::Null),
        (
            start(quick_service()).await,
            json!({"include_usage": false}),
        ),
    ] {
        let mut body =
            json!({"model": "m", "stream": true, "max_tokens": 4, "messages": two_messages()});
        if !stream_options.is_null() {
            body["stream_options"] = stream_options;
        }
        let data = stream_data(&url, body).await;
        assert_eq!(data.last().unwrap(), "[DONE]");
        for d in &data[..data.len() - 1] {
            let c: Value = serde_json::from_str(d).unwrap();
            assert!(c.get("usage").is_none(), "{c}");
            assert_eq!(c["choices"].as_array().unwrap().len(), 1, "{c}");
        }
    }
}

// The prefix cache.

/// `n` distinct words, `tag` telling prompts apart.
fn words(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i}")).collect()
}

fn user_tokens(words: &[String]) -> Vec<prefix::Token<'_>> {
    words
        .iter()
        .map(|word| prefix::Token {
            message: 0,
            role: "user",
            word,
        })
        .collect()
}

/// Looks a prompt up in the cache and stores it, as a request does; returns the tokens found.
fn run_prompt(cache: &mut prefix::PrefixCache, words: &[String]) -> usize {
    let hashes = prefix::block_hashes(&user_tokens(words));
    let cached = cache.lookup(&hashes, words.len());
    cache.insert(&hashes);
    cached
}

#[test]
fn a_repeated_prompt_hits_on_its_full_blocks() {
    let mut cache = prefix::PrefixCache::new(1024);
    let prompt = words("a", 40);
    assert_eq!(run_prompt(&mut cache, &prompt), 0, "a cold cache");
    assert_eq!(
        run_prompt(&mut cache, &prompt),
        32,
        "two full blocks; the last 8 tokens are no block"
    );
    assert_eq!((cache.queries(), cache.hits()), (80, 32));
}

#[test]
fn a_prompt_found_whole_still_computes_its_last_token() {
    let mut cache = prefix::PrefixCache::new(1024);
    let prompt = words("a", 32);
    run_prompt(&mut cache, &prompt);
    assert_eq!(
        run_prompt(&mut cache, &prompt),
        16,
        "as vLLM, one block short"
    );
}

#[test]
fn a_longer_prompt_sharing_a_prefix_hits_on_the_shared_full_blocks_only() {
    let mut cache = prefix::PrefixCache::new(1024);
    let first = words("a", 40);
    run_prompt(&mut cache, &first);

    // The whole first prompt and more: its two full blocks hit; its partial third block was
    // never stored.
    let mut longer = first.clone();
    longer.extend(words("b", 30));
    assert_eq!(run_prompt(&mut cache, &longer), 32);

    // 20 words shared, then another path: one block.
    let mut forked = first[..20].to_vec();
    forked.extend(words("c", 50));
    assert_eq!(run_prompt(&mut cache, &forked), 16);

    // The same words after a different first block: nothing (the hashes are chained).
    let mut shifted = words("d", 16);
    shifted.extend(first[16..32].iter().cloned());
    shifted.extend(words("e", 8));
    assert_eq!(run_prompt(&mut cache, &shifted), 0);
}

#[test]
fn the_same_words_in_another_message_or_role_are_other_tokens() {
    let text = words("a", 40);
    let as_user = prefix::block_hashes(&user_tokens(&text));
    let as_system: Vec<_> = user_tokens(&text)
        .into_iter()
        .map(|t| prefix::Token {
            role: "system",
            ..t
        })
        .collect();
    let split: Vec<_> = user_tokens(&text)
        .into_iter()
        .enumerate()
        .map(|(i, t)| prefix::Token {
            message: usize::from(i >= 20),
            ..t
        })
        .collect();
    assert_ne!(prefix::block_hashes(&as_system)[0], as_user[0]);
    assert_eq!(
        prefix::block_hashes(&split)[0],
        as_user[0],
        "same first block"
    );
    assert_ne!(prefix::block_hashes(&split)[1], as_user[1]);
}

#[test]
fn the_cache_evicts_the_least_recently_used_blocks_past_its_capacity() {
    // Room for 4 blocks; each prompt fills 2.
    let mut cache = prefix::PrefixCache::new(64);
    let (a, b, c) = (words("a", 33), words("b", 33), words("c", 33));
    run_prompt(&mut cache, &a);
    run_prompt(&mut cache, &b);
    assert_eq!(run_prompt(&mut cache, &a), 32, "a is now the most recent");
    run_prompt(&mut cache, &c);
    assert_eq!(
        run_prompt(&mut cache, &b),
        0,
        "b was the least recent: evicted"
    );
    // Storing b again evicted a (less recent than c)...
    assert_eq!(run_prompt(&mut cache, &c), 32);
    assert_eq!(run_prompt(&mut cache, &a), 0);
    // ...and a prompt larger than the cache keeps its leading blocks.
    let long = words("l", 100);
    run_prompt(&mut cache, &long);
    assert_eq!(run_prompt(&mut cache, &long), 64);
}

#[test]
fn a_cached_prefix_shortens_the_prefill_before_the_first_token() {
    // 1 ms of prefill per token.
    let engine = Engine::new(8, 4096);
    let text = words("a", 100);
    let prompt = engine.prompt(&user_tokens(&text));
    let cold = engine.plan_prefill(1000.0, &prompt);
    assert_eq!(
        cold,
        Prefill {
            cached_tokens: 0,
            duration: Duration::from_millis(100)
        }
    );
    engine.prefilled(&prompt);
    let warm = engine.plan_prefill(1000.0, &prompt);
    assert_eq!(
        warm,
        Prefill {
            cached_tokens: 96,
            duration: Duration::from_millis(4)
        }
    );

    let uncached = Engine::new(8, 0);
    let prompt = uncached.prompt(&user_tokens(&text));
    uncached.prefilled(&prompt);
    assert_eq!(uncached.plan_prefill(1000.0, &prompt).cached_tokens, 0);
}

#[tokio::test]
async fn the_prefix_cache_counts_queried_and_hit_tokens_as_vllm_does() {
    let url = start_with_prefix_cache(quick_service(), 4096).await;
    // 3 + 40 words: the first 32 are two full blocks (the second ends inside the user's).
    let messages = json!([{"role": "system", "content": "be a parrot"},
        {"role": "user", "content": words("a", 40).join(" ")}]);
    post(
        &url,
        json!({"model": "m", "max_tokens": 2, "messages": messages}),
    )
    .await;
    let data = stream_data(
        &url,
        json!({"model": "m", "stream": true, "max_tokens": 2, "messages": messages}),
    )
    .await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(metric(&url, "vllm:prefix_cache_queries_total").await, 86.0);
    assert_eq!(metric(&url, "vllm:prefix_cache_hits_total").await, 32.0);

    let off = start(quick_service()).await;
    post(&off, json!({"model": "m", "messages": messages})).await;
    assert_eq!(metric(&off, "vllm:prefix_cache_queries_total").await, 0.0);
    assert_eq!(metric(&off, "vllm:prefix_cache_hits_total").await, 0.0);
}
