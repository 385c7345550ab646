//! Connections to model servers: HTTP/1.1 keep-alive connections, kept idle per endpoint and
//! reused newest first.
//!
//! A connection goes back to its endpoint's idle list only once the answer's body was read to
//! its end; one whose answer failed, timed out or was abandoned by the client is closed. An idle
//! connection is not reused after [`IDLE_FOR`], below the 5 s keep-alive of uvicorn (vLLM), so
//! a request is never written to a connection the model server is about to close. A reused
//! connection the model server had already closed is dropped before the request goes out, and
//! the next one (or a new one) takes it.
//!
//! A task of the proxy closes connections idle for longer than that every [`IDLE_FOR`], so a
//! burst's connections do not stay open after its traffic stopped.
//!
//! Each endpoint has its own lists, found through the endpoint the policy picked: no look-up by
//! host, no task per request to watch a connection come back (what a general-purpose pooled
//! client costs on every request). It has one list per thread that serves client connections
//! (see [`connection_thread`]), so a connection is only ever used by the thread whose runtime
//! made it, and no two threads share a lock.
//!
//! The exchange on a connection (writing the request, reading the answer) is the HTTP/1.1
//! client of [`crate::http::client`]; here is what the load balancer adds: the pool, the
//! dialing and where an endpoint's requests go.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use skylaunch_protocol::error_chain;
use tower_service::Service;

use crate::http::client::Failure;
pub use crate::http::client::{Answer, Conn, Head};
use crate::http::headers::HOP_HEADER;
use crate::http::threads::{connection_thread, cores};

/// Longest an idle connection is kept for reuse.
pub const IDLE_FOR: Duration = Duration::from_secs(4);

/// Idle connections kept per endpoint at most; beyond that, a returning one is closed.
const MAX_IDLE: usize = 1024;

/// Where an endpoint's requests go, worked out once from its URL.
#[derive(Debug)]
pub struct Target {
    /// `scheme://host:port/`, what the connector dials.
    connect: Uri,
    /// The `Host` header: the host, and the port when it is not the scheme's default.
    host: HeaderValue,
    /// The URL's path (no trailing slash), put before each request's path; usually empty.
    prefix: String,
    /// `authorization: Bearer <the model server's key>\r\n`, when it has one.
    authorization: Option<Box<[u8]>>,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad endpoint URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s,
            _ => return Err("bad endpoint URL: it must start with http:// or https://".into()),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| "bad endpoint URL: it has no host".to_string())?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => authority.as_str().to_string(),
            _ => authority.host().to_string(),
        };
        let host = HeaderValue::from_str(&host).map_err(|e| format!("bad endpoint URL: {e}"))?;
        let connect = format!("{scheme}://{authority}/")
            .parse()
            .map_err(|e| format!("bad endpoint URL: {e}"))?;
        Ok(Target {
            connect,
            host,
            prefix: uri.path().trim_end_matches('/').to_string(),
            authorization: None,
        })
    }

    /// This target, with every request carrying the model server's API key.
    pub fn with_key(mut self, key: Option<&str>) -> Target {
        self.authorization = key.map(|key| {
            format!("authorization: Bearer {key}\r\n")
                .into_bytes()
                .into()
        });
        self
    }

    /// The head of a `POST` of `body_len` bytes to `path` (its path and query in origin form,
    /// e.g. `/v1/completions?x=1`) on this endpoint, with `headers` (name and value).
    pub fn post_head(&self, path: &str, headers: &[(&[u8], &[u8])], body_len: usize) -> Vec<u8> {
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(b"POST ");
        head.extend_from_slice(self.prefix.as_bytes());
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(self.host.as_bytes());
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(HOP_HEADER.as_bytes());
        head.extend_from_slice(b": 1\r\n");
        if let Some(authorization) = &self.authorization {
            head.extend_from_slice(authorization);
        }
        for (name, value) in headers {
            head.extend_from_slice(name);
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        // Writing to a Vec cannot fail.
        let _ = write!(head, "content-length: {body_len}\r\n\r\n");
        head
    }
}

/// Shares per pool: one for threads that are not connection threads (the main runtime's), and
/// one per core for the connection threads (two share one only when there are more threads
/// than cores).
fn slot_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| 1 + cores())
}

/// One endpoint's idle connections: a list per thread share (see [`connection_thread`]),
/// oldest first.
pub struct Pool {
    slots: Box<[Slot]>,
}

/// A share's list, on a cache line of its own: each is used by one thread, and none should
/// slow another down by sharing its line.
#[derive(Default)]
#[repr(align(128))]
struct Slot(Mutex<VecDeque<(Instant, Conn)>>);

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            slots: (0..slot_count()).map(|_| Slot::default()).collect(),
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle", &self.idle()).finish()
    }
}

impl Pool {
    /// The current thread's list.
    fn mine(&self) -> &Mutex<VecDeque<(Instant, Conn)>> {
        // There are always at least two lists (see `slot_count`).
        let at = match connection_thread() {
            0 => 0,
            n => 1 + (n - 1) % (self.slots.len() - 1),
        };
        &self.slots[at].0
    }

    /// The most recently used idle connection still worth trying, if any.
    fn take(&self) -> Option<Conn> {
        let list = self.mine();
        loop {
            let mut conn = {
                let mut idle = list.lock().expect("pool lock");
                let (since, conn) = idle.pop_back()?;
                if since.elapsed() >= IDLE_FOR {
                    // The newest is too old: so are the rest.
                    idle.clear();
                    return None;
                }
                conn
            };
            // Looked at outside the lock.
            if !conn.is_closed() {
                return Some(conn);
            }
        }
    }

    /// A connection whose answer was read to its end, back for the next request (on the
    /// thread that made it: the only one that takes from this list).
    pub fn put(&self, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.mine().lock().expect("pool lock");
        while idle
            .front()
            .is_some_and(|(since, _)| now.duration_since(*since) >= IDLE_FOR)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((now, conn));
        }
    }

    /// Closes the idle connections that are too old to be reused, and those the model server
    /// closed: run every [`IDLE_FOR`] so a burst's connections do not stay open after its
    /// traffic stopped.
    pub fn close_expired(&self) {
        let now = Instant::now();
        for slot in &self.slots {
            slot.0
                .lock()
                .expect("pool lock")
                .retain_mut(|(since, conn)| {
                    now.duration_since(*since) < IDLE_FOR && !conn.is_closed()
                });
        }
    }

    /// Closes the idle connections of the connection threads (see [`connection_thread`]): once
    /// their runtimes stopped, nothing drives those connections any more.
    pub fn close_threads_connections(&self) {
        for slot in self.slots.iter().skip(1) {
            slot.0.lock().expect("pool lock").clear();
        }
    }

    /// How many idle connections it keeps, all threads together.
    pub fn idle(&self) -> usize {
        self.slots
            .iter()
            .map(|slot| slot.0.lock().map_or(0, |idle| idle.len()))
            .sum()
    }
}

/// Why a request got no answer from a model server.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing reached the model server.
    Connect(String),
    /// The model server took the request and closed the connection (or reset it) before any
    /// byte of an answer.
    Closed(String),
    /// Anything else (a malformed answer, say).
    Failed(String),
}

impl From<Failure> for SendError {
    fn from(failure: Failure) -> SendError {
        match failure {
            Failure::Closed(e) => SendError::Closed(e),
            Failure::Failed(e) => SendError::Failed(e),
        }
    }
}

/// Dials model servers: TCP without Nagle's delay, under the connect timeout; `https://`
/// endpoints through rustls with Mozilla's roots. No HTTP(S)_PROXY applies.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<HttpConnector>,
}

impl Connector {
    pub fn new(connect_timeout: Duration) -> Connector {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let inner = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .expect("rustls's safe default protocol versions are supported by ring")
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Connector { inner }
    }

    /// Sends a request (its `head` from [`Target::post_head`], and `body`) to the endpoint that
    /// owns `pool`: on the newest idle connection that is still open, else on a new one.
    /// Returns the answer's head and its body, whose connection goes back to `pool` once the
    /// body was read to its end.
    pub async fn send(
        &self,
        pool: &Pool,
        target: &Target,
        head: Vec<u8>,
        body: &[u8],
    ) -> Result<(Head, Answer), SendError> {
        let conn = match pool.take() {
            Some(conn) => conn,
            None => self.connect(target).await?,
        };
        Ok(conn.exchange(head, body).await?)
    }

    async fn connect(&self, target: &Target) -> Result<Conn, SendError> {
        let mut dial = self.inner.clone();
        std::future::poll_fn(|cx| dial.poll_ready(cx))
            .await
            .map_err(|e| SendError::Connect(error_chain(&*e)))?;
        let io = dial
            .call(target.connect.clone())
            .await
            .map_err(|e| SendError::Connect(error_chain(&*e)))?;
        Ok(Conn::new(TokioIo::new(io)))
    }
}

#[cfg(test)]
mod tests;
