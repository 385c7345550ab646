//! Writing an answer on the client's connection: its head, then its body as it comes, gathered
//! into as few writes as the body allows.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ServerConnection, MAX_HEAD, READ_SIZE};
use crate::http::framing::Framing;

/// Answer bytes gathered before they are written, when the model server sends faster than the
/// client reads.
const WRITE_AT: usize = 64 * 1024;

impl<I, L> ServerConnection<I, L>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub(super) async fn send_response(
        &mut self,
        response: Response,
        close: bool,
    ) -> io::Result<()> {
        let (parts, body) = response.into_parts();
        self.send(parts.status, &parts.headers, None, body, close)
            .await
    }

    /// Writes an answer, its body as it comes: whatever is ready is gathered and written at
    /// once, and the connection waits only when the body has nothing more yet. A client that
    /// goes away meanwhile drops the body (for a forwarded request, the upstream request with
    /// it).
    pub(super) async fn send<B>(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        extra: Option<(&HeaderName, &HeaderValue)>,
        body: B,
        close: bool,
    ) -> io::Result<()>
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut body = body;
        let framing = Framing::to_write(status, body.size_hint().exact(), headers);
        write_head(&mut self.out, status, headers, extra, framing, close);
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

    pub(super) async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }
}

/// A response head: the status line, `headers` less any framing of their own (and less any
/// named as `extra`), `extra`, the framing used here, and `connection: close` when the
/// connection ends after it.
fn write_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    extra: Option<(&HeaderName, &HeaderValue)>,
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
            || extra.is_some_and(|(extra, _)| name == extra)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = extra {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        // An answer is never written to run until the close.
        Framing::None | Framing::UntilClose => {}
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
