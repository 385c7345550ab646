//! skylaunch's built-in **echo model server**: a small OpenAI-compatible server that answers by
//! echoing the prompt back. It is not a language model. It exists so the local provider can run
//! the whole launch → register → ready → route flow on a machine without a GPU or vLLM, and it
//! says what it is in every answer (`owned_by: "skylaunch-echo"`, `system_fingerprint`).

use std::net::SocketAddr;

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
}

/// The server's routes. With an `api_key`, `/v1/*` wants `Authorization: Bearer <key>` and
/// answers 401 without it, as vLLM does with `--api-key` (`/health` and `/metrics` stay open).
pub fn router(model: &str, api_key: Option<String>) -> Router {
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
        })
        .layer(keyed)
}

pub async fn serve(
    listen: SocketAddr,
    model: &str,
    api_key: Option<String>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, model, "echo model server listening (echoes prompts; not a language model)");
    axum::serve(
        axum::serve::ListenerExt::tap_io(listener, crate::http::socket::no_delay),
        router(model, api_key),
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

async fn chat(State(echo): State<Echo>, Json(body): Json<Value>) -> Response {
    if let Some(r) = wrong_model(&echo, &body) {
        return r;
    }
    let text = format!("echo: {}", last_user_text(&body));
    let id = format!("chatcmpl-echo-{}", uuid::Uuid::new_v4().simple());
    if body["stream"] == true {
        let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
        let model = echo.model.clone();
        let mut events: Vec<Result<Event, std::convert::Infallible>> = words
            .into_iter()
            .map(|w| {
                Ok(Event::default().data(
                    json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model, "system_fingerprint": FINGERPRINT,
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": w}, "finish_reason": null}]})
                    .to_string(),
                ))
            })
            .collect();
        events.push(Ok(Event::default().data(
            json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model, "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            .to_string(),
        )));
        events.push(Ok(Event::default().data("[DONE]")));
        return Sse::new(futures_util::stream::iter(events)).into_response();
    }
    Json(json!({"id": id, "object": "chat.completion", "created": 0, "model": echo.model, "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}))
    .into_response()
}

async fn completions(State(echo): State<Echo>, Json(body): Json<Value>) -> Response {
    if let Some(r) = wrong_model(&echo, &body) {
        return r;
    }
    let prompt = match &body["prompt"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Json(json!({"id": format!("cmpl-echo-{}", uuid::Uuid::new_v4().simple()), "object": "text_completion", "created": 0,
        "model": echo.model, "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "text": format!("echo: {prompt}"), "finish_reason": "stop"}]}))
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
    Json(json!({"object": "list", "model": echo.model, "data": data})).into_response()
}

async fn metrics(State(echo): State<Echo>) -> String {
    format!(
        "# HELP vllm:num_requests_running Requests running (echo server: always 0).\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"{m}\"}} 0\n\
         vllm:num_requests_waiting{{model_name=\"{m}\"}} 0\n",
        m = echo.model
    )
}
