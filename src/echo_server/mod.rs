//! skylaunch's built-in **echo model server**: a small OpenAI-compatible server that answers by
//! echoing the prompt back. It is not a language model. It exists so the local provider can run
//! the whole launch → register → ready → route flow on a machine without a GPU or vLLM, and it
//! says what it is in every answer (`owned_by: "skylaunch-echo"`, `system_fingerprint`).
//!
//! By default it answers at once. Knobs (flags, or `ECHO_*` variables, which the local provider
//! passes from a launch's `envs`) make it behave more like a model server:
//!
//! - [`Latency`]: a fixed delay per chat answer, plus one per chat request answered at the same
//!   time (`ECHO_DELAY_MS`, `ECHO_DELAY_PER_REQUEST_MS`).
//! - [`ServiceModel`], a simple vLLM-like one (`ECHO_PREFILL_US_PER_TOKEN`,
//!   `ECHO_DECODE_US_PER_TOKEN`, `ECHO_MAX_SEQS`): a chat request's prompt tokens are its
//!   messages' whitespace-separated words, its output tokens its `max_tokens` (as vLLM with
//!   `ignore_eos`; 16 when absent). At most `max_seqs` sequences run at once; the rest wait in
//!   a first-come queue. A running sequence's first token comes after `prefill × prompt
//!   tokens`, each further one after `decode` more. Batching is free: a sequence's speed does
//!   not depend on how many others run (no KV-cache limit beyond `max_seqs`, no chunked
//!   prefill). `/metrics` publishes the queue as vLLM does (`vllm:num_requests_running`,
//!   `vllm:num_requests_waiting`), which the node agent reports with every heartbeat.
//!   A stream's head goes out at once, as vLLM's does; its first chunk after the queue and the
//!   prefill, the rest when decoding ends.
//! - A prefix cache for the service model (`ECHO_PREFIX_CACHE_TOKENS`, 0 = off, the default),
//!   as vLLM's automatic prefix caching: a prompt's tokens (its words, each tagged with its
//!   message's position and role) are cut into blocks of 16 known by chained hashes; the cache
//!   keeps at most that many tokens' worth of blocks, the least recently used evicted first. A
//!   request's cached prefix is its longest run of leading blocks found when it starts running
//!   (short of its last token, as in vLLM); only the other tokens cost prefill; its blocks are
//!   stored once its prefill is done. `/metrics` counts the tokens looked up and found as vLLM
//!   v1 does (`vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total`). See
//!   [`prefix`].
//! - A startup delay (`ECHO_STARTUP_DELAY_MS`): the server listens only after it, as a model
//!   server is not ready before its weights are loaded.
//!
//! Every chat and completion answer reports `usage`: the prompt's words, the answer's tokens
//! (its words; `max_tokens` under the service model). A stream asked for it with
//! `"stream_options": {"include_usage": true}` ends, before `[DONE]`, with a chunk whose
//! `choices` are empty and which carries `usage`, as vLLM's does; like vLLM's, the other chunks
//! have no `usage` field (OpenAI's carry `"usage": null`).

mod engine;
mod prefix;

use engine::{cost, Engine, Prompt, Sequence};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const FINGERPRINT: &str = "skylaunch-echo";

#[derive(Clone)]
struct Echo {
    model: String,
    latency: Latency,
    service: ServiceModel,
    /// Chat requests being answered now (for [`Latency`]).
    active: Arc<AtomicUsize>,
    engine: Arc<Engine>,
}

/// How long a chat answer takes: `base_ms`, plus `per_request_ms` for each chat request being
/// answered at the same time (itself included), so latency rises with concurrency as a real
/// model server's does. Zero by default: the echo answers at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub base_ms: u64,
    pub per_request_ms: u64,
}

/// A simple vLLM-like service model for chat completions (see the module's description). All
/// zero by default: off.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServiceModel {
    /// Microseconds of prefill per prompt token; the first output token comes after them.
    pub prefill_us_per_token: f64,
    /// Microseconds per output token after the first.
    pub decode_us_per_token: f64,
    /// Sequences running at once at most; the others wait in a first-come queue. 0: no limit.
    pub max_seqs: usize,
    /// Tokens the prefix cache holds (`ECHO_PREFIX_CACHE_TOKENS`); 0: no prefix cache.
    pub prefix_cache_tokens: usize,
}

impl ServiceModel {
    fn is_on(&self) -> bool {
        self.prefill_us_per_token > 0.0 || self.decode_us_per_token > 0.0 || self.max_seqs > 0
    }
}

/// Everything that shapes how the echo server answers; the default answers at once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Options {
    pub latency: Latency,
    pub service: ServiceModel,
    /// How long after starting the server listens.
    pub startup_delay: Duration,
}

/// The server's routes. With an `api_key`, `/v1/*` wants `Authorization: Bearer <key>` and
/// answers 401 without it, as vLLM does with `--api-key` (`/health` and `/metrics` stay open).
pub fn router(model: &str, api_key: Option<String>) -> Router {
    router_with(model, api_key, Latency::default())
}

/// [`router`] whose chat answers take [`Latency`].
pub fn router_with(model: &str, api_key: Option<String>, latency: Latency) -> Router {
    router_with_options(
        model,
        api_key,
        &Options {
            latency,
            ..Options::default()
        },
    )
}

/// [`router`] shaped by [`Options`] (the startup delay is [`serve`]'s).
pub fn router_with_options(model: &str, api_key: Option<String>, options: &Options) -> Router {
    let keyed = axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let api_key = api_key.clone();
            async move {
                let wanted = api_key.map(|key| format!("Bearer {key}"));
                let given = req.headers().get(axum::http::header::AUTHORIZATION);
                let refused = req.uri().path().starts_with("/v1")
                    && wanted.is_some_and(|w| {
                        given.is_none_or(|g| {
                            !bool::from(subtle::ConstantTimeEq::ct_eq(g.as_bytes(), w.as_bytes()))
                        })
                    });
                if refused {
                    return (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({"error": "Unauthorized"})),
                    )
                        .into_response();
                }
                next.run(req).await
            }
        },
    );
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/metrics", get(metrics))
        .with_state(Echo {
            model: model.to_string(),
            latency: options.latency,
            service: options.service,
            active: Default::default(),
            engine: Arc::new(Engine::new(
                options.service.max_seqs,
                options.service.prefix_cache_tokens,
            )),
        })
        .layer(keyed)
}

pub async fn serve(
    listen: SocketAddr,
    model: &str,
    api_key: Option<String>,
    port_file: Option<&std::path::Path>,
    latency: Latency,
) -> std::io::Result<()> {
    let options = Options {
        latency,
        ..Options::default()
    };
    serve_with(listen, model, api_key, port_file, &options).await
}

/// Listens `startup_delay` after it is called: until then connections are refused, as by a
/// model server still loading its weights.
pub async fn listen_after(
    listen: SocketAddr,
    startup_delay: Duration,
) -> std::io::Result<tokio::net::TcpListener> {
    if !startup_delay.is_zero() {
        tracing::info!(
            ?startup_delay,
            "echo model server starting up (not listening yet)"
        );
        tokio::time::sleep(startup_delay).await;
    }
    tokio::net::TcpListener::bind(listen).await
}

/// [`serve`] shaped by [`Options`].
pub async fn serve_with(
    listen: SocketAddr,
    model: &str,
    api_key: Option<String>,
    port_file: Option<&std::path::Path>,
    options: &Options,
) -> std::io::Result<()> {
    let listener = listen_after(listen, options.startup_delay).await?;
    if let Some(path) = port_file {
        // Written whole under another name, then renamed: a reader never sees half a number.
        let part = path.with_extension("part");
        std::fs::write(&part, format!("{}\n", listener.local_addr()?.port()))?;
        std::fs::rename(&part, path)?;
    }
    tracing::info!(%listen, model, "echo model server listening (echoes prompts; not a language model)");
    axum::serve(
        axum::serve::ListenerExt::tap_io(listener, crate::http::socket::no_delay),
        router_with_options(model, api_key, options),
    )
    .with_graceful_shutdown(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
    })
    .await
}

async fn models(State(echo): State<Echo>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": echo.model, "object": "model", "created": 0, "owned_by": FINGERPRINT}]}),
    )
}

fn wrong_model(echo: &Echo, body: &Value) -> Option<Response> {
    let asked = body["model"].as_str().unwrap_or_default();
    (asked != echo.model).then(|| {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"message": format!("The model `{asked}` does not exist. This echo server serves `{}`.", echo.model), "type": "NotFoundError", "code": 404}})),
        )
            .into_response()
    })
}

fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
        .unwrap_or_default()
}

/// Every message's words, in order (the prompt tokens of the usage and the service model).
fn prompt_tokens<'a>(body: &'a Value) -> Vec<prefix::Token<'a>> {
    let mut tokens = Vec::new();
    for (message, m) in body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let role = m["role"].as_str().unwrap_or_default();
        let mut add = |text: &'a str| {
            tokens.extend(text.split_whitespace().map(|word| prefix::Token {
                message,
                role,
                word,
            }))
        };
        match &m["content"] {
            Value::String(s) => add(s),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .for_each(&mut add),
            _ => {}
        }
    }
    tokens
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens})
}

/// Whether a stream ends with a usage chunk (OpenAI's `stream_options.include_usage`).
fn include_usage(body: &Value) -> bool {
    body["stream_options"]["include_usage"] == true
}

async fn chat(State(echo): State<Echo>, Json(body): Json<Value>) -> Response {
    if let Some(r) = wrong_model(&echo, &body) {
        return r;
    }
    let id = format!("chatcmpl-echo-{}", uuid::Uuid::new_v4().simple());
    if echo.service.is_on() {
        return modelled(echo, &body, id).await;
    }
    // Running (for `/metrics`) while it is answered; nothing waits without a service model.
    let _running = echo.engine.admit().await;
    let text = format!("echo: {}", last_user_text(&body));
    let usage = usage(prompt_tokens(&body).len(), text.split_whitespace().count());
    if echo.latency != Latency::default() {
        let now = echo.active.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        let wait = echo.latency.base_ms + echo.latency.per_request_ms * now;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        echo.active.fetch_sub(1, Ordering::SeqCst);
    }
    if body["stream"] == true {
        let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
        let mut events: Vec<Result<Event, std::convert::Infallible>> = words
            .into_iter()
            .map(|w| {
                Ok(chunk(
                    &id,
                    &echo.model,
                    json!({"role": "assistant", "content": w}),
                    Value::Null,
                ))
            })
            .collect();
        events.push(Ok(chunk(&id, &echo.model, json!({}), json!("stop"))));
        if include_usage(&body) {
            events.push(Ok(usage_chunk(&id, &echo.model, usage)));
        }
        events.push(Ok(Event::default().data("[DONE]")));
        return Sse::new(futures_util::stream::iter(events)).into_response();
    }
    Json(json!({"id": id, "object": "chat.completion", "created": 0, "model": echo.model, "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage}))
    .into_response()
}

fn chunk(id: &str, model: &str, delta: Value, finish_reason: Value) -> Event {
    Event::default().data(
        json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model, "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
        .to_string(),
    )
}

/// A stream's last chunk before `[DONE]` when it asked for usage: no choices, the usage.
fn usage_chunk(id: &str, model: &str, usage: Value) -> Event {
    Event::default().data(
        json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model, "system_fingerprint": FINGERPRINT,
            "choices": [], "usage": usage})
        .to_string(),
    )
}

/// Output tokens when a request gives no `max_tokens`.
const DEFAULT_OUTPUT_TOKENS: u64 = 16;
/// The most output tokens one answer makes.
const MAX_OUTPUT_TOKENS: u64 = 65_536;

/// A chat answer under the [`ServiceModel`]: queue, prefill (past the cached prefix), then
/// decode.
async fn modelled(echo: Echo, body: &Value, id: String) -> Response {
    let tokens = prompt_tokens(body);
    let prompt = echo.engine.prompt(&tokens);
    let output_tokens = body["max_tokens"]
        .as_u64()
        .or_else(|| body["max_completion_tokens"].as_u64())
        .unwrap_or(DEFAULT_OUTPUT_TOKENS)
        .clamp(1, MAX_OUTPUT_TOKENS) as usize;
    // The first token, then the prompt's words again, one per further token.
    let first = "echo:".to_string();
    let rest: String = (1..output_tokens)
        .map(|i| match tokens.len() {
            0 => " echo".to_string(),
            n => format!(" {}", tokens[(i - 1) % n].word),
        })
        .collect();
    let prefill_us_per_token = echo.service.prefill_us_per_token;
    let decode = cost(echo.service.decode_us_per_token, output_tokens - 1);
    let usage = usage(prompt.tokens, output_tokens);
    if body["stream"] != true {
        let _sequence = echo.engine.admit().await;
        let prefill = echo.engine.plan_prefill(prefill_us_per_token, &prompt);
        tokio::time::sleep(prefill.duration).await;
        echo.engine.prefilled(&prompt);
        tokio::time::sleep(decode).await;
        return Json(json!({"id": id, "object": "chat.completion", "created": 0, "model": echo.model, "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": first + &rest}, "finish_reason": "length"}],
            "usage": usage}))
        .into_response();
    }
    let mut tail =
        std::collections::VecDeque::from([chunk(&id, &echo.model, json!({}), json!("length"))]);
    if include_usage(body) {
        tail.push_back(usage_chunk(&id, &echo.model, usage));
    }
    tail.push_back(Event::default().data("[DONE]"));
    let answer = Streamed {
        engine: echo.engine.clone(),
        sequence: None,
        prompt,
        prefill_us_per_token,
        decode,
        id,
        model: echo.model.clone(),
        first,
        rest,
        step: 0,
        tail,
    };
    let events = futures_util::stream::unfold(answer, |mut a| async move {
        let event = match a.step {
            0 => {
                a.sequence = Some(a.engine.admit().await);
                let prefill = a.engine.plan_prefill(a.prefill_us_per_token, &a.prompt);
                tokio::time::sleep(prefill.duration).await;
                a.engine.prefilled(&a.prompt);
                let first = std::mem::take(&mut a.first);
                chunk(
                    &a.id,
                    &a.model,
                    json!({"role": "assistant", "content": first}),
                    Value::Null,
                )
            }
            1 => {
                tokio::time::sleep(a.decode).await;
                // The slot is free once the last token is out.
                a.sequence = None;
                let rest = std::mem::take(&mut a.rest);
                if rest.is_empty() {
                    // One output token: nothing more to send but the tail.
                    a.tail.pop_front()?
                } else {
                    chunk(&a.id, &a.model, json!({"content": rest}), Value::Null)
                }
            }
            _ => a.tail.pop_front()?,
        };
        a.step = a.step.saturating_add(1);
        Some((Ok::<_, std::convert::Infallible>(event), a))
    });
    Sse::new(events).into_response()
}

/// A streamed answer under the service model, step by step: the first token (after the queue
/// and the prefill), the rest (after decoding), then the tail: the finish, the usage if asked
/// for, `[DONE]`.
struct Streamed {
    engine: Arc<Engine>,
    /// Held from admission until the last token.
    sequence: Option<Sequence>,
    prompt: Prompt,
    prefill_us_per_token: f64,
    decode: Duration,
    id: String,
    model: String,
    first: String,
    rest: String,
    step: u8,
    tail: std::collections::VecDeque<Event>,
}

async fn completions(State(echo): State<Echo>, Json(body): Json<Value>) -> Response {
    if let Some(r) = wrong_model(&echo, &body) {
        return r;
    }
    let prompt = match &body["prompt"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let text = format!("echo: {prompt}");
    let usage = usage(
        prompt.split_whitespace().count(),
        text.split_whitespace().count(),
    );
    Json(json!({"id": format!("cmpl-echo-{}", uuid::Uuid::new_v4().simple()), "object": "text_completion", "created": 0,
        "model": echo.model, "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": usage}))
    .into_response()
}

async fn embeddings(State(echo): State<Echo>, Json(body): Json<Value>) -> Response {
    if let Some(r) = wrong_model(&echo, &body) {
        return r;
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or_default().to_string())
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![String::new()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            // A deterministic vector from the bytes: same text, same embedding.
            let mut v = [0f64; 8];
            for (j, b) in text.bytes().enumerate() {
                v[j % 8] += f64::from(b) / 255.0;
            }
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    Json(json!({"object": "list", "model": echo.model, "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

/// The queue and the prefix cache's counters in vLLM's metric names and format: chat requests
/// being answered (at most `max_seqs` under the service model) and those waiting for a slot,
/// which the node agent reads; prompt tokens looked up in the prefix cache and found there
/// (zero without one).
async fn metrics(State(echo): State<Echo>) -> String {
    let (queries, hits) = echo
        .engine
        .prefix_cache()
        .map_or((0, 0), |cache| (cache.queries(), cache.hits()));
    format!(
        "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"{m}\"}} {running:.1}\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"{m}\"}} {waiting:.1}\n\
         # HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.\n\
         # TYPE vllm:prefix_cache_queries_total counter\n\
         vllm:prefix_cache_queries_total{{model_name=\"{m}\"}} {queries:.1}\n\
         # HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.\n\
         # TYPE vllm:prefix_cache_hits_total counter\n\
         vllm:prefix_cache_hits_total{{model_name=\"{m}\"}} {hits:.1}\n",
        m = echo.model,
        running = echo.engine.running.load(Ordering::SeqCst) as f64,
        waiting = echo.engine.waiting.load(Ordering::SeqCst) as f64,
        queries = queries as f64,
        hits = hits as f64,
    )
}

#[cfg(test)]
mod tests;
