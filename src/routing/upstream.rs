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
//! Each endpoint has its own list, found through the endpoint the policy picked: no look-up by
//! host, no task per request to watch a connection come back (what a general-purpose pooled
//! client costs on every request).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

/// Longest an idle connection is kept for reuse.
pub const IDLE_FOR: Duration = Duration::from_secs(4);

/// Idle connections kept per endpoint at most; beyond that, a returning one is closed.
const MAX_IDLE: usize = 1024;

/// A connection to a model server, ready for one request at a time.
pub type Conn = SendRequest<Full<Bytes>>;

/// Where an endpoint's requests go, worked out once from its URL.
#[derive(Debug)]
pub struct Target {
    /// `scheme://host:port/`, what the connector dials.
    connect: Uri,
    /// The `Host` header: the host, and the port when it is not the scheme's default.
    host: HeaderValue,
    /// The URL's path (no trailing slash), put before each request's path; usually empty.
    prefix: String,
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
        })
    }

    /// The request line's target for `path` (e.g. `/v1/completions?x=1`) on this endpoint.
    /// A client's absolute-form target (`http://host/v1/...`) is sent on in origin form.
    pub fn uri(&self, path: &Uri) -> Result<Uri, String> {
        if self.prefix.is_empty() && path.scheme().is_none() {
            return Ok(path.clone());
        }
        let path = path.path_and_query().map_or("/", |p| p.as_str());
        format!("{}{path}", self.prefix)
            .parse()
            .map_err(|e| format!("bad endpoint URL: {e}"))
    }

    pub fn host(&self) -> &HeaderValue {
        &self.host
    }
}

/// One endpoint's idle connections, oldest first.
#[derive(Default, Debug)]
pub struct Pool {
    idle: Mutex<VecDeque<(Instant, Conn)>>,
}

impl Pool {
    /// The most recently used idle connection still worth trying, if any.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some((since, conn)) = idle.pop_back() {
            if since.elapsed() >= IDLE_FOR {
                // The newest is too old: so are the rest.
                idle.clear();
                return None;
            }
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// A connection whose answer was read to its end, back for the next request.
    pub fn put(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
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

    /// Closes the idle connections that are too old to be reused, and forgets those the model
    /// server closed: run every [`IDLE_FOR`] so a burst's connections do not stay open (a
    /// socket and a task each) after its traffic stopped.
    pub fn close_expired(&self) {
        let now = Instant::now();
        self.idle
            .lock()
            .expect("pool lock")
            .retain(|(since, conn)| now.duration_since(*since) < IDLE_FOR && !conn.is_closed());
    }
}

/// Why a request got no answer from a model server.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing reached the model server.
    Connect(String),
    /// The model server took the request and closed the connection (or reset it) before any
    /// byte of an answer.
    Closed(hyper::Error),
    /// Anything else (a malformed answer, say).
    Failed(hyper::Error),
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

    /// Sends `request` to the endpoint that owns `pool`: on the newest idle connection that is
    /// still open, else on a new one. Returns the answer's head and the connection, which goes
    /// back to `pool` once the body was read to its end.
    pub async fn send(
        &self,
        pool: &Pool,
        target: &Target,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        while let Some(mut conn) = pool.take() {
            if conn.ready().await.is_err() {
                continue;
            }
            match conn.try_send_request(request).await {
                Ok(response) => return Ok((response, conn)),
                Err(mut e) => match e.take_message() {
                    // The connection closed before the request went out: try the next.
                    Some(unsent) => request = unsent,
                    None => return Err(classify(e.into_error())),
                },
            }
        }
        let mut conn = self.connect(target).await?;
        match conn.send_request(request).await {
            Ok(response) => Ok((response, conn)),
            Err(e) => Err(classify(e)),
        }
    }

    async fn connect(&self, target: &Target) -> Result<Conn, SendError> {
        let mut dial = self.inner.clone();
        std::future::poll_fn(|cx| dial.poll_ready(cx))
            .await
            .map_err(|e| SendError::Connect(super::proxy::with_causes(&*e)))?;
        let io = dial
            .call(target.connect.clone())
            .await
            .map_err(|e| SendError::Connect(super::proxy::with_causes(&*e)))?;
        let (conn, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(super::proxy::with_causes(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %super::proxy::with_causes(&e), "model server connection ended");
            }
        });
        Ok(conn)
    }
}

/// Whether the model server's connection ended (closed or reset) before its answer began.
fn classify(e: hyper::Error) -> SendError {
    if e.is_incomplete_message() || e.is_canceled() || reset(&e) {
        SendError::Closed(e)
    } else {
        SendError::Failed(e)
    }
}

fn reset(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_keeps_the_port_only_when_it_is_not_the_default() {
        let t = Target::parse("http://10.0.0.5:8000").unwrap();
        assert_eq!(t.host(), "10.0.0.5:8000");
        assert_eq!(t.connect, "http://10.0.0.5:8000/");
        let t = Target::parse("https://models.example:443/base").unwrap();
        assert_eq!(t.host(), "models.example");
        let path: Uri = "/v1/completions?x=1".parse().unwrap();
        assert_eq!(t.uri(&path).unwrap(), "/base/v1/completions?x=1");
        let t = Target::parse("http://[::1]:9000/").unwrap();
        assert_eq!(t.host(), "[::1]:9000");
        assert_eq!(t.uri(&path).unwrap(), path);
        let absolute: Uri = "http://skylaunch:8080/v1/completions?x=1".parse().unwrap();
        assert_eq!(t.uri(&absolute).unwrap(), path);
    }

    #[test]
    fn a_target_needs_an_http_url_with_a_host() {
        for bad in ["ftp://h:1", "/just/a/path", "http://", "not a url"] {
            assert!(Target::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
