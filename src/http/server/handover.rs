//! A connection this server does not read itself goes to hyper's HTTP/1.1 server for the rest
//! of its life, with the bytes already read from it; the requests hyper reads go to the same
//! application.

use std::convert::Infallible;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use axum::http::{header, HeaderValue, Method, Request};
use axum::response::Response;
use bytes::{Buf, BytesMut};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::{Handler, ServerConnection};
use crate::http::connections::ProgressBody;
use crate::http::dispatch::Dispatch;

/// Gives the connection to hyper's HTTP/1.1 server, which reads `connection.buf` first.
pub(super) async fn hand_over<I, D>(
    connection: ServerConnection<I, D::Local>,
    handler: Handler<D>,
    mut stopping: watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: Dispatch,
{
    let io = Prefixed {
        read: connection.buf,
        io: connection.io,
    };
    let header_timeout = handler.slot.header_timeout();
    let service = service_fn(move |request| handler.clone().handle(request));
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

impl<D: Dispatch> Handler<D> {
    /// A request on a connection hyper serves. Its body is held to the body timeout.
    async fn handle(self, request: Request<Incoming>) -> Result<Response, Infallible> {
        // A head read by hyper: hyper's header timer covers the next one.
        self.slot.busy();
        if let Some(mut refused) = self.refused_here(request.uri().path()) {
            refused
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(refused);
        }
        let request = request.map(|body| ProgressBody::new(body, self.slot.clone()));
        if request.method() == Method::POST {
            if let Some(route) = self.dispatch.forwarded_route(request.uri().path()) {
                return Ok(self.dispatch.forward_streaming(route, request).await);
            }
        }
        Ok(self.dispatch.route(self.peer, request).await)
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
