//! Targets and their request heads; the pool kept per connection thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::fleet::status::NodeStatus;
use crate::http::threads::ConnectionThreads;
use crate::routing::table::{tests::node, Endpoint};
use crate::routing::RoutingTable;

#[test]
fn a_target_keeps_the_port_only_when_it_is_not_the_default() {
    let t = Target::parse("http://10.0.0.5:8000").unwrap();
    assert_eq!(t.host, "10.0.0.5:8000");
    assert_eq!(t.connect, "http://10.0.0.5:8000/");
    let t = Target::parse("https://models.example:443/base").unwrap();
    assert_eq!(t.host, "models.example");
    let path = "/v1/completions?x=1";
    let head = |t: &Target, path: &str| String::from_utf8(t.post_head(path, &[], 2)).unwrap();
    assert_eq!(
        head(&t, path),
        "POST /base/v1/completions?x=1 HTTP/1.1\r\nhost: models.example\r\nx-skylaunch-hop: 1\r\ncontent-length: 2\r\n\r\n"
    );
    let t = Target::parse("http://[::1]:9000/").unwrap();
    assert_eq!(t.host, "[::1]:9000");
    assert!(head(&t, path).starts_with("POST /v1/completions?x=1 HTTP/1.1\r\nhost: [::1]:9000\r\n"));
    let forwarded: &[(&[u8], &[u8])] = &[(b"content-type", b"application/json")];
    assert_eq!(
        String::from_utf8(t.post_head(path, forwarded, 2)).unwrap(),
        "POST /v1/completions?x=1 HTTP/1.1\r\nhost: [::1]:9000\r\nx-skylaunch-hop: 1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
    );
}

#[test]
fn a_keyed_target_sends_the_model_servers_key_on_every_request() {
    let t = Target::parse("http://10.0.0.5:8000")
        .unwrap()
        .with_key(Some("mk-1"));
    let head = String::from_utf8(t.post_head("/v1/completions", &[], 2)).unwrap();
    assert_eq!(
        head,
        "POST /v1/completions HTTP/1.1\r\nhost: 10.0.0.5:8000\r\nx-skylaunch-hop: 1\r\nauthorization: Bearer mk-1\r\ncontent-length: 2\r\n\r\n"
    );
}

#[test]
fn a_target_needs_an_http_url_with_a_host() {
    for bad in ["ftp://h:1", "/just/a/path", "http://", "not a url"] {
        assert!(Target::parse(bad).is_err(), "{bad} was accepted");
    }
}

/// A model server on 127.0.0.1 answering `{}` to each request, over keep-alive
/// connections; returns its URL and how many of its connections are open.
async fn model_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let open = Arc::new(AtomicUsize::new(0));
    let counted = open.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut more = [0u8; 1024];
                // Every request here has the two-byte body `{}`.
                while let Ok(n @ 1..) = socket.read(&mut more).await {
                    request.extend_from_slice(&more[..n]);
                    if request.ends_with(b"\r\n\r\n{}") {
                        request.clear();
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                        if socket.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                }
                counted.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (url, open)
}

/// One request to `endpoint`, its answer read to its end and its connection kept.
async fn ask(endpoint: &Endpoint) {
    let target = endpoint.target.as_ref().unwrap();
    let head = target.post_head("/v1/completions", &[], 2);
    let (head, mut answer) = Connector::new(Duration::from_secs(2))
        .send(&endpoint.pool, target, head, b"{}")
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    while let Some(data) = std::future::poll_fn(|cx| answer.poll_data(cx)).await {
        data.unwrap();
    }
    endpoint.pool.put(answer.take_reusable().expect("reusable"));
}

#[tokio::test]
async fn stopping_the_threads_drops_their_tasks_and_closes_the_connections_kept_for_them() {
    let (url, open) = model_server().await;
    let table = Arc::new(RoutingTable::default());
    let mut ready = node("n1", "m", NodeStatus::Ready, Some(1.0));
    ready.endpoint_url = Some(url);
    table.update(&ready);
    let endpoint = table.endpoints("m").unwrap()[0].clone();

    let closing = table.clone();
    let mut threads = ConnectionThreads::start(2)
        .unwrap()
        .on_stop(move || closing.close_threads_connections());
    // One request on each thread: each keeps its own connection, made by its own runtime.
    for _ in 0..2 {
        let endpoint = endpoint.clone();
        let asked = threads
            .next_thread()
            .spawn(async move { ask(&endpoint).await });
        asked.await.unwrap();
    }
    assert_eq!(endpoint.pool.idle(), 2, "one connection kept per thread");
    assert_eq!(open.load(Ordering::SeqCst), 2);

    // A task still running when the threads stop is dropped with its runtime.
    let (held, dropped) = tokio::sync::oneshot::channel::<()>();
    threads.next_thread().spawn(async move {
        let _held = held;
        std::future::pending::<()>().await
    });
    drop(threads);
    assert!(dropped.await.is_err(), "the task was dropped");

    // Nothing would drive the kept connections any more: they are closed, not left for the
    // next request to fail on.
    assert_eq!(endpoint.pool.idle(), 0);
    for _ in 0..200 {
        if open.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        open.load(Ordering::SeqCst),
        0,
        "the model server saw them closed"
    );
    // This runtime reaches the model server as before, on a connection of its own.
    ask(&endpoint).await;
    assert_eq!(endpoint.pool.idle(), 1);
}
