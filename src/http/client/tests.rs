//! The client against model servers made of raw bytes: answers split across reads, interim
//! answers, every framing, and the failures told apart.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;

/// Where a test's model server listens.
struct Target(SocketAddr);

/// Keeps the connection an answer handed back, for the next request (as the upstream pool
/// does).
#[derive(Default)]
struct Pool(Mutex<Option<Conn>>);

impl Pool {
    fn put(&self, conn: Conn) {
        *self.0.lock().unwrap() = Some(conn);
    }
}

/// A model server on 127.0.0.1 that answers each request on its one connection with
/// `pieces`, written apart so the answer arrives over several reads, then closes the
/// connection if `close` says so.
async fn raw_server(pieces: Vec<&'static [u8]>, close: bool) -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        loop {
            // Every request in these tests has the two-byte body `{}`.
            while !request.windows(6).any(|w| w == b"\r\n\r\n{}") {
                let mut more = [0u8; 1024];
                match socket.read(&mut more).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&more[..n]),
                }
            }
            request.clear();
            for piece in &pieces {
                socket.write_all(piece).await.unwrap();
                socket.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if close {
                return;
            }
        }
    });
    Target(addr)
}

/// One request, on the kept connection if there is one, else on a new one.
async fn ask(target: &Target, pool: &Pool) -> Result<(Head, Answer), Failure> {
    let head = b"POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n".to_vec();
    let kept = pool.0.lock().unwrap().take();
    let conn = match kept {
        Some(conn) => conn,
        None => {
            let tcp = TcpStream::connect(target.0).await.unwrap();
            Conn::new(TokioIo::new(MaybeHttpsStream::Http(TokioIo::new(tcp))))
        }
    };
    conn.exchange(head, b"{}").await
}

async fn read_all(answer: &mut Answer) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(data) = std::future::poll_fn(|cx| answer.poll_data(cx)).await {
        body.extend_from_slice(&data?);
    }
    Ok(body)
}

#[tokio::test]
async fn a_chunked_answer_split_across_reads_is_unchunked_and_its_connection_reused() {
    let target = raw_server(
        vec![
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n",
            b"x-served-by: a\r\nx-served-by: b\r\nkeep-alive: timeout=5\r\n\r\n6;ext=1\r\ndata: ",
            b"\r\n3\r\nhi\n\r",
            b"\n0\r\nx-trailer: dropped\r\n\r\n",
        ],
        false,
    )
    .await;
    let pool = Pool::default();
    for _ in 0..2 {
        let (head, mut answer) = ask(&target, &pool).await.unwrap();
        assert_eq!(head.status, StatusCode::OK);
        let served_by: Vec<_> = head.headers.get_all("x-served-by").iter().collect();
        assert_eq!(served_by, ["a", "b"]);
        assert!(head.headers.get("transfer-encoding").is_none());
        assert!(head.headers.get("keep-alive").is_none());
        assert_eq!(read_all(&mut answer).await.unwrap(), b"data: hi\n");
        assert!(answer.is_end());
        pool.put(answer.take_reusable().expect("reusable"));
    }
}

#[tokio::test]
async fn interim_answers_are_skipped_and_a_length_delimits_the_body() {
    let target = raw_server(
        vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhe",
            b"llo",
        ],
        false,
    )
    .await;
    let (head, mut answer) = ask(&target, &Pool::default()).await.unwrap();
    assert_eq!(head.status, StatusCode::CREATED);
    assert_eq!(head.headers["content-length"], "5");
    assert_eq!(answer.remaining(), Some(5));
    assert_eq!(read_all(&mut answer).await.unwrap(), b"hello");
    assert!(answer.take_reusable().is_some());
}

#[tokio::test]
async fn an_answer_without_a_length_runs_to_the_close_and_its_connection_is_not_reused() {
    let target = raw_server(vec![b"HTTP/1.0 200 OK\r\n\r\nall ", b"of it"], true).await;
    let (_, mut answer) = ask(&target, &Pool::default()).await.unwrap();
    assert_eq!(read_all(&mut answer).await.unwrap(), b"all of it");
    assert!(answer.is_end());
    assert!(answer.take_reusable().is_none());
}

#[tokio::test]
async fn a_connection_the_model_server_asked_to_close_is_not_reused() {
    let target = raw_server(
        vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"],
        false,
    )
    .await;
    let (head, mut answer) = ask(&target, &Pool::default()).await.unwrap();
    assert!(head.headers.get("connection").is_none());
    assert_eq!(read_all(&mut answer).await.unwrap(), b"ok");
    assert!(answer.take_reusable().is_none());
}

#[tokio::test]
async fn a_length_next_to_chunked_is_dropped_and_the_chunks_decide() {
    let target = raw_server(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
        false,
    )
    .await;
    let (head, mut answer) = ask(&target, &Pool::default()).await.unwrap();
    assert!(head.headers.get("content-length").is_none());
    assert_eq!(read_all(&mut answer).await.unwrap(), b"ok");
}

#[tokio::test]
async fn closing_before_any_answer_is_told_apart_from_a_malformed_answer() {
    let target = raw_server(vec![], true).await;
    let failed = ask(&target, &Pool::default()).await.err().unwrap();
    assert!(matches!(failed, Failure::Closed(_)), "{failed:?}");
    let target = raw_server(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"],
        false,
    )
    .await;
    let failed = ask(&target, &Pool::default()).await.err().unwrap();
    assert!(
        matches!(&failed, Failure::Failed(e) if e.contains("two different content-lengths")),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_body_cut_short_or_badly_chunked_is_an_error_not_an_end() {
    let target = raw_server(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
        true,
    )
    .await;
    let (_, mut answer) = ask(&target, &Pool::default()).await.unwrap();
    let e = read_all(&mut answer).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert!(!answer.is_end() && answer.take_reusable().is_none());

    let target = raw_server(
        vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokay\r\n0\r\n\r\n"],
        false,
    )
    .await;
    let (_, mut answer) = ask(&target, &Pool::default()).await.unwrap();
    let e = read_all(&mut answer).await.unwrap_err();
    assert!(e.to_string().contains("longer than its size"), "{e}");
    assert!(answer.take_reusable().is_none());
}
