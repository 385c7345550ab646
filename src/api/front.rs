//! The server's side of each client connection: HTTP/1.1 read and written here, on the
//! connection's own buffer.
//!
//! Requests the load balancer forwards (a `POST` to `/v1/chat/completions`, `/v1/completions`
//! or `/v1/embeddings` with a `content-length` within the proxy's body limit) are parsed in
//! place, their body is taken from the same buffer without a copy, and the model server's
//! answer is written back as it arrives (head and first data in one write). No request or
//! response objects are built on the way, and no task or channel sits between the connection
//! and the request's body: that was about a third of the proxy's work. Other requests with a
//! `content-length` (or no body) of at most [`BODY_LIMIT`] go to the router as usual, their
//! answers streamed the same way (server-sent events included).
//!
//! A request that is not HTTP at all gets a JSON 400 (`malformed_request`), and the connection
//! is closed. Anything else (a chunked or oversized body, HTTP/1.0, `HEAD`, an upgrade, a head
//! this reader does not take) hands the connection, with every byte read from it, to hyper's HTTP/1.1
//! server for the rest of its life, and hyper answers it as it answers every request (errors
//! included).
//!
//! An answer's framing: none for 1xx, 204 and 304; `content-length` when the body's size is
//! known; chunked otherwise. A client that closes the connection while its answer waits for
//! more drops the answer (for a forwarded request, the upstream request with it).

use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request as HttpRequest, StatusCode, Uri,
};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::error::ApiError;
use super::{v1, Front, BODY_LIMIT};
use crate::app::AppState;
use crate::metrics::{Counter, Histogram};
use crate::routing::{content_length, forwarded_request_header, is_hop_header, lists_token};

/// Largest request head read here; a longer one goes to hyper with the connection.
const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in a request head read here.
const MAX_HEADERS: usize = 64;
/// Room made in the buffer for each read.
const READ_SIZE: usize = 8 * 1024;
/// Answer bytes gathered before they are written, when the model server sends faster than the
/// client reads.
const WRITE_AT: usize = 64 * 1024;

/// Serves one client connection until it closes, or until `stopping` says the server stops
/// (an idle connection closes at once; one in a request finishes it first).
pub(super) async fn serve_connection<I>(io: I, front: Front, stopping: watch::Receiver<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The wait for the stop is made once per connection and kept: a new one for each idle
    // spell would take the channel's waiter-list lock twice per request, a lock every
    // connection shares.
    let mut stop_rx = stopping.clone();
    let mut stop = pin!(stop_rx.changed());
    let mut client = Client {
        io,
        buf: BytesMut::with_capacity(READ_SIZE),
        out: Vec::with_capacity(READ_SIZE),
        series: Vec::new(),
    };
    let slot = front.slot.clone();
    // A new connection owes its first head within the header timeout from the accept (set
    // when it was admitted); a kept one waits for its next request under the idle timeout,
    // then owes that head within the header timeout from its first bytes.
    let mut kept = false;
    loop {
        if client.buf.is_empty() {
            if kept {
                slot.wait_idle();
            }
            // Waiting for a request: the stop closes the connection.
            client.buf.reserve(READ_SIZE);
            let read = tokio::select! {
                biased;
                read = client.io.read_buf(&mut client.buf) => read,
                _ = stop.as_mut() => return,
            };
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        }
        if kept {
            slot.wait_head();
            kept = false;
        }
        let limit = front.state.proxy.settings.body_limit;
        let request = match parse(&client.buf, limit) {
            Parsed::Ready(request) => request,
            // The head's deadline holds until hyper has read it (see `Front::handle`); hyper's
            // own header timer covers the heads after it.
            Parsed::Other => return hand_over(client, front, stopping).await,
            Parsed::Malformed(e) => {
                let error = ApiError::bad_request(
                    "malformed_request",
                    format!("the request is not valid HTTP/1.1: {e}"),
                );
                let _ = client.send_response(error.into_response(), true).await;
                let _ = client.io.shutdown().await;
                return;
            }
            Parsed::Partial if client.buf.len() >= MAX_HEAD => {
                return hand_over(client, front, stopping).await
            }
            Parsed::Partial => {
                client.buf.reserve(READ_SIZE);
                if !matches!(client.io.read_buf(&mut client.buf).await, Ok(n) if n > 0) {
                    return;
                }
                continue;
            }
        };
        let keep = client.answer(&front, request).await;
        if !keep || stopping.has_changed().is_err() {
            let _ = client.io.shutdown().await;
            return;
        }
        kept = true;
    }
}

/// A connection, the bytes read from it that no request used yet, and the answer being
/// written (kept between requests for its room).
struct Client<I> {
    io: I,
    buf: BytesMut,
    out: Vec<u8>,
    /// The request-metric series of this connection's forwarded requests, by route and
    /// status, looked up once.
    series: Vec<(&'static str, StatusCode, Counter, Histogram)>,
}

/// Where a request's parts are in its head.
struct Request {
    head_len: usize,
    what: What,
    /// Path and query.
    path: Range<usize>,
    body_len: usize,
    /// The client asked to close the connection after this answer.
    close: bool,
    /// The client waits for `100 Continue` before sending the body.
    expects_continue: bool,
    authorization: Option<Range<usize>>,
    /// It carries the load balancer's hop header: it went through one already.
    looped: bool,
    /// For a forwarded request: the headers a model server gets (name, value).
    forwarded: Vec<(Range<usize>, Range<usize>)>,
}

enum What {
    /// A request the load balancer forwards, on this route.
    Forward(&'static str),
    /// A request for the router: its method, target and headers.
    Route(Method, Uri, HeaderMap),
}

// Made once per request and moved once: boxing the request would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Ready(Request),
    /// Not a request read here: hyper serves it.
    Other,
    /// Not HTTP/1.1: answered with a JSON 400, and the connection closed.
    Malformed(httparse::Error),
    /// The head is not all here yet.
    Partial,
}

/// What `buf` starts with: a request served here (a forwarded one with a body of at most
/// `forward_limit` bytes, or one for the router with a body of at most [`BODY_LIMIT`]), or
/// something else.
fn parse(buf: &[u8], forward_limit: usize) -> Parsed {
    // Left uninitialized: the parser fills what it uses.
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut lines,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // hyper allows a few more header lines.
        Err(httparse::Error::TooManyHeaders) => return Parsed::Other,
        Err(e) => return Parsed::Malformed(e),
    };
    let (Some(method), Some(1), Some(path)) = (parsed.method, parsed.version, parsed.path) else {
        return Parsed::Other;
    };
    // Origin form only; HEAD (a body's headers without the body) and CONNECT go to hyper.
    if !path.starts_with('/') || method == "HEAD" || method == "CONNECT" {
        return Parsed::Other;
    }
    let forward = if method == "POST" {
        v1::forwarded_path(path.split('?').next().unwrap_or_default())
    } else {
        None
    };
    let (what, limit) = match forward {
        Some(route) => (What::Forward(route), forward_limit),
        None => {
            let (Ok(method), Ok(uri)) =
                (Method::from_bytes(method.as_bytes()), Uri::try_from(path))
            else {
                return Parsed::Other;
            };
            let mut headers = HeaderMap::with_capacity(parsed.headers.len());
            for line in parsed.headers.iter() {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(line.name.as_bytes()),
                    HeaderValue::from_bytes(line.value),
                ) else {
                    return Parsed::Other;
                };
                headers.append(name, value);
            }
            (What::Route(method, uri, headers), BODY_LIMIT)
        }
    };
    let start = buf.as_ptr() as usize;
    let at = |part: &[u8]| {
        let from = part.as_ptr() as usize - start;
        from..from + part.len()
    };
    let forwarding = matches!(what, What::Forward(_));
    let mut request = Request {
        head_len,
        what,
        path: at(path.as_bytes()),
        body_len: 0,
        close: false,
        expects_continue: false,
        authorization: None,
        looped: false,
        forwarded: Vec::with_capacity(if forwarding { parsed.headers.len() } else { 0 }),
    };
    let mut length = None;
    for line in parsed.headers.iter() {
        let name = line.name.as_bytes();
        let value = line.value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(value).and_then(|n| usize::try_from(n).ok());
            // Two lengths, a bad one or one over the limit: hyper answers it.
            if length.is_some() || n.is_none_or(|n| n > limit) {
                return Parsed::Other;
            }
            length = n;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case(b"expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Parsed::Other;
            }
            request.expects_continue = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            request.close |= lists_token(value, b"close");
        } else if !forwarding {
        } else if name.eq_ignore_ascii_case(b"authorization") {
            request.authorization = Some(at(line.value));
        } else if is_hop_header(name) {
            request.looped = true;
        } else if forwarded_request_header(name) {
            request.forwarded.push((at(name), at(line.value)));
        }
    }
    // A forwarded request without a length has no body: hyper answers that it needs one.
    request.body_len = match length {
        Some(n) => n,
        None if forwarding => return Parsed::Other,
        None => 0,
    };
    Parsed::Ready(request)
}

impl<I> Client<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Reads a request's body, serves the request and writes the answer back. Whether the
    /// connection can take another request.
    async fn answer(&mut self, front: &Front, request: Request) -> bool {
        let head = self.buf.split_to(request.head_len).freeze();
        // Refused before any of the body is read or asked for (`100 Continue`): a connection
        // in the agents' places serves only agent requests, and /v1 wants its key.
        let path = std::str::from_utf8(&head[request.path.clone()]).unwrap_or_default();
        let refused = front.refused_here(path).or_else(|| match request.what {
            What::Forward(_) => v1::check_key(
                &front.state,
                request.authorization.clone().map(|r| &head[r]),
            )
            .err()
            .or_else(|| request.looped.then(v1::loop_detected)),
            What::Route(..) => None,
        });
        if let Some(error) = refused {
            // A body already here is skipped; one still to come closes the connection.
            let close = request.close || self.buf.len() < request.body_len;
            if !close {
                self.buf.advance(request.body_len);
            }
            if let What::Forward(route) = request.what {
                self.count(&front.state, route, error.status, Instant::now());
            }
            let written = self.send_response(error.into_response(), close).await;
            return written.is_ok() && !close;
        }
        if self.buf.len() < request.body_len {
            if request.expects_continue
                && self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
            {
                return false;
            }
            self.buf.reserve(request.body_len - self.buf.len());
            while self.buf.len() < request.body_len {
                // Each piece of the body must come within the body timeout of the last.
                front.slot.wait_body();
                if !matches!(self.io.read_buf(&mut self.buf).await, Ok(n) if n > 0) {
                    return false;
                }
            }
        }
        front.slot.busy();
        let body = self.buf.split_to(request.body_len).freeze();
        let written = match request.what {
            What::Forward(route) => {
                let started = Instant::now();
                // The parser only hands out a path that is text.
                let path = std::str::from_utf8(&head[request.path.clone()]).unwrap_or("/");
                let state = &front.state;
                let forwarded: Vec<(&[u8], &[u8])> = request
                    .forwarded
                    .iter()
                    .map(|(name, value)| (&head[name.clone()], &head[value.clone()]))
                    .collect();
                let answer = v1::forward_body(state, path, &forwarded, body).await;
                let status = answer.as_ref().map_or_else(|e| e.status, |a| a.status);
                self.count(state, route, status, started);
                match answer {
                    Ok(answer) => {
                        self.send(answer.status, &answer.headers, answer.body, request.close)
                            .await
                    }
                    Err(error) => {
                        self.send_response(error.into_response(), request.close)
                            .await
                    }
                }
            }
            What::Route(method, uri, headers) => {
                let mut routed = HttpRequest::new(Body::from(body));
                *routed.method_mut() = method;
                *routed.uri_mut() = uri;
                *routed.headers_mut() = headers;
                let response = front.route(routed).await;
                self.send_response(response, request.close).await
            }
        };
        written.is_ok() && !request.close
    }

    /// Counts a forwarded request in the HTTP metrics, as [`super::count_request`] does.
    fn count(
        &mut self,
        state: &AppState,
        route: &'static str,
        status: StatusCode,
        started: Instant,
    ) {
        let at = match self
            .series
            .iter()
            .position(|(r, s, _, _)| *r == route && *s == status)
        {
            Some(at) => at,
            None => {
                let (counter, histogram) = super::request_series(state, route, "POST", status);
                self.series.push((route, status, counter, histogram));
                self.series.len() - 1
            }
        };
        let (_, _, counter, histogram) = &self.series[at];
        counter.inc();
        histogram.observe(started.elapsed().as_secs_f64());
    }

    async fn send_response(&mut self, response: Response, close: bool) -> io::Result<()> {
        let (parts, body) = response.into_parts();
        self.send(parts.status, &parts.headers, body, close).await
    }

    /// Writes an answer, its body as it comes: whatever is ready is gathered and written at
    /// once, and the connection waits only when the body has nothing more yet. A client that
    /// goes away meanwhile drops the body (for a forwarded request, the upstream request with
    /// it).
    async fn send<B>(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        body: B,
        close: bool,
    ) -> io::Result<()>
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut body = body;
        let framing = if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::None
        } else if let Some(n) = body
            .size_hint()
            .exact()
            .or_else(|| declared_length(headers))
        {
            // A length the handler declared for a stream (a file) is kept, as hyper does: the
            // client sees the size up front, and a stream that ends short breaks the answer.
            Framing::Length(n)
        } else {
            Framing::Chunked
        };
        write_head(&mut self.out, status, headers, framing, close);
        if framing == Framing::None {
            return self.flush_out().await;
        }
        // Bytes the declared length still promises.
        let mut owed = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        loop {
            let frame = match poll_once(&mut body) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.flush_out().await?;
                    let closed = client_closed(&mut self.io, &mut self.buf);
                    tokio::select! {
                        frame = body.frame() => frame,
                        () = closed => return Err(io::ErrorKind::ConnectionAborted.into()),
                    }
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if framing == Framing::Chunked {
                        // Writing to a Vec cannot fail.
                        let _ = io::Write::write_fmt(
                            &mut self.out,
                            format_args!("{:x}\r\n", data.len()),
                        );
                        self.out.extend_from_slice(&data);
                        self.out.extend_from_slice(b"\r\n");
                    } else {
                        let Some(left) = owed.checked_sub(data.len() as u64) else {
                            self.flush_out().await?;
                            return Err(io::Error::other("a body longer than its length"));
                        };
                        owed = left;
                        self.out.extend_from_slice(&data);
                    }
                    if self.out.len() >= WRITE_AT {
                        self.flush_out().await?;
                    }
                }
                Some(Err(e)) => {
                    // What came is written; the missing end (a short length, no last chunk)
                    // tells the client the answer broke off.
                    self.flush_out().await?;
                    return Err(io::Error::other(e.to_string()));
                }
                None => {
                    if framing == Framing::Chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.flush_out().await?;
                    // A body that ended short of its length leaves the connection unusable.
                    return if owed == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::other("a body shorter than its length"))
                    };
                }
            }
        }
    }

    async fn flush_out(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self.io.write_all(&self.out).await;
        self.out.clear();
        written?;
        self.io.flush().await
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }
}

/// How an answer's body is delimited on the client's connection.
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    /// No body (204, 304).
    None,
    Length(u64),
    Chunked,
}

/// A response head: the status line, `headers` less any framing of their own, the framing
/// used here, and `connection: close` when the connection ends after it.
fn write_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::None => {}
        // Writing to a Vec cannot fail.
        Framing::Length(n) => {
            let _ = io::Write::write_fmt(out, format_args!("content-length: {n}\r\n"));
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `content-length` a response's headers declare, if one valid one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    content_length(value.as_bytes())
}

/// Polls a body once, without waiting.
#[allow(clippy::type_complexity)]
fn poll_once<B: HttpBody + Unpin>(
    body: &mut B,
) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    Pin::new(body).poll_frame(&mut cx)
}

/// Completes when the client closes the connection (or it fails). What the client sends
/// meanwhile (its next request) is kept in `buf`, up to a head's worth.
async fn client_closed<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) {
    loop {
        if buf.len() >= MAX_HEAD {
            return std::future::pending().await;
        }
        buf.reserve(READ_SIZE);
        if !matches!(io.read_buf(buf).await, Ok(n) if n > 0) {
            return;
        }
    }
}

/// Gives the connection to hyper's HTTP/1.1 server, which reads `client.buf` first.
async fn hand_over<I>(client: Client<I>, front: Front, mut stopping: watch::Receiver<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Prefixed {
        read: client.buf,
        io: client.io,
    };
    let header_timeout = front.state.connections.settings().header_timeout;
    let service = service_fn(move |request| front.clone().handle(request));
    // hyper's header timer runs from the moment it waits for a head, kept-alive waits
    // included; without a timer hyper would silently drop it.
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service);
    let mut connection = pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopping.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

/// A connection whose first bytes were already read: they are read again first.
struct Prefixed<I> {
    read: BytesMut,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
