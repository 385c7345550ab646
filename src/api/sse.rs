//! Server-sent event streams: one JSON payload per named event, produced by a task.

use std::convert::Infallible;

use axum::response::sse::Event;
use futures_util::stream::Stream;
use serde_json::Value;

pub fn event(kind: &str, data: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().event(kind).data(data.to_string()))
}

/// A stream fed by a task through a channel (keeps the SSE logic a plain async block). The task
/// is stopped when the client goes away or the server starts shutting down, whatever it is
/// waiting on.
pub fn async_stream<F, Fut>(
    mut stopping: tokio::sync::watch::Receiver<bool>,
    body: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let gone = tx.clone();
    let task = body(tx);
    tokio::spawn(async move {
        tokio::select! {
            _ = task => {}
            _ = gone.closed() => {}
            _ = stopping.wait_for(|stop| *stop) => {}
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
