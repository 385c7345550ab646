//! Our HTTP/1.1 server: each client connection read and written here, on the connection's own
//! buffer.
//!
//! Requests the load balancer forwards (a `POST` on a route [`Dispatch::forwarded_route`]
//! names, with a `content-length` within [`Dispatch::forward_body_limit`]) are parsed in
//! place, their body is taken from the same buffer without a copy, and the model server's
//! answer is written back as it arrives (head and first data in one write). No request or
//! response objects are built on the way, and no task or channel sits between the connection
//! and the request's body: that was about a third of the proxy's work. Other requests with a
//! `content-length` (or no body) of at most [`Dispatch::route_body_limit`] go to
//! [`Dispatch::route`], their answers streamed the same way (server-sent events included).
//!
//! A request that is not HTTP at all gets a 400 ([`Refusal::NotHttp`]), and the connection is
//! closed. Anything else (a chunked or oversized body, HTTP/1.0, `HEAD`, an upgrade, a head
//! this reader does not take) hands the connection, with every byte read from it, to hyper's
//! HTTP/1.1 server for the rest of its life ([`handover`]), and hyper answers it as it answers
//! every request (errors included).
//!
//! An answer's framing: see [`crate::http::framing::Framing::to_write`]. A client that closes the connection while
//! its answer waits for more drops the answer (for a forwarded request, the upstream request
//! with it).
//!
//! Here: the connection loop and a request's course; [`request`]: reading a request head;
//! [`response`]: writing an answer.

mod handover;
mod request;
mod response;

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::connections::Slot;
use super::dispatch::{Dispatch, ForwardHead, ForwardRequest, Refusal};
use request::{parse, Parsed, ParsedHead, RequestKind};

/// Largest request head read here; a longer one goes to hyper with the connection.
const MAX_HEAD: usize = 16 * 1024;
/// Room made in the buffer for each read.
const READ_SIZE: usize = 8 * 1024;

/// What serves one connection's requests: the application, the peer's address, and the
/// connection's place in the registry (its deadlines, and whether it is restricted).
#[derive(Clone)]
pub(super) struct Handler<D> {
    pub(super) dispatch: D,
    pub(super) peer: SocketAddr,
    pub(super) slot: Arc<Slot>,
}

impl<D: Dispatch> Handler<D> {
    /// The refusal of a request for `path` on a restricted connection, if it is one the
    /// application does not allow there.
    fn refused_here(&self, path: &str) -> Option<Response> {
        (self.slot.restricted && !self.dispatch.allowed_when_restricted(path))
            .then(|| self.dispatch.refusal(Refusal::Restricted))
    }
}

/// Serves one client connection until it closes, or until `stopping` says the server stops
/// (an idle connection closes at once; one in a request finishes it first).
pub(super) async fn serve_connection<I, D>(
    io: I,
    handler: Handler<D>,
    stopping: watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: Dispatch,
{
    // The wait for the stop is made once per connection and kept: a new one for each idle
    // spell would take the channel's waiter-list lock twice per request, a lock every
    // connection shares.
    let mut stop_rx = stopping.clone();
    let mut stop = pin!(stop_rx.changed());
    let mut connection = ServerConnection {
        io,
        buf: BytesMut::with_capacity(READ_SIZE),
        out: Vec::with_capacity(READ_SIZE),
        local: D::Local::default(),
    };
    let slot = handler.slot.clone();
    // A new connection owes its first head within the header timeout from the accept (set
    // when it was admitted); a kept one waits for its next request under the idle timeout,
    // then owes that head within the header timeout from its first bytes.
    let mut kept = false;
    loop {
        if connection.buf.is_empty() {
            if kept {
                slot.wait_idle();
            }
            // Waiting for a request: the stop closes the connection.
            connection.buf.reserve(READ_SIZE);
            let read = tokio::select! {
                biased;
                read = connection.io.read_buf(&mut connection.buf) => read,
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
        let request = match parse(&connection.buf, &handler.dispatch) {
            Parsed::Ready(request) => request,
            // The head's deadline holds until hyper has read it (see `Handler::handle`);
            // hyper's own header timer covers the heads after it.
            Parsed::Other => return handover::hand_over(connection, handler, stopping).await,
            Parsed::Malformed(e) => {
                let refusal = handler.dispatch.refusal(Refusal::NotHttp(e));
                let _ = connection.send_response(refusal, true).await;
                let _ = connection.io.shutdown().await;
                return;
            }
            Parsed::Partial if connection.buf.len() >= MAX_HEAD => {
                return handover::hand_over(connection, handler, stopping).await
            }
            Parsed::Partial => {
                connection.buf.reserve(READ_SIZE);
                if !matches!(connection.io.read_buf(&mut connection.buf).await, Ok(n) if n > 0) {
                    return;
                }
                continue;
            }
        };
        let keep = connection.answer(&handler, request).await;
        if !keep || stopping.has_changed().is_err() {
            let _ = connection.io.shutdown().await;
            return;
        }
        kept = true;
    }
}

/// A client's connection, the bytes read from it that no request used yet, the answer being
/// written (kept between requests for its room), and what the application keeps for it.
struct ServerConnection<I, L> {
    io: I,
    buf: BytesMut,
    out: Vec<u8>,
    local: L,
}

impl<I, L> ServerConnection<I, L>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    L: Send,
{
    /// Reads a request's body, serves the request and writes the answer back. Whether the
    /// connection can take another request.
    async fn answer<D>(&mut self, handler: &Handler<D>, request: ParsedHead) -> bool
    where
        D: Dispatch<Local = L>,
    {
        let head = self.buf.split_to(request.head_len).freeze();
        // Refused before any of the body is read or asked for (`100 Continue`): a restricted
        // connection serves only what the application allows there, and it may turn a
        // forwarded request away on its head.
        let path = std::str::from_utf8(&head[request.path.clone()]).unwrap_or_default();
        // Who sent a forwarded request, as the application told on its head.
        let mut caller = None;
        let refused = match request.kind {
            RequestKind::Forward(route) => {
                let forward = ForwardHead {
                    route,
                    path,
                    authorization: request.authorization.clone().map(|r| &head[r]),
                    looped: request.looped,
                    restricted: handler.slot.restricted,
                };
                match handler.dispatch.admit_forward(&mut self.local, &forward) {
                    Ok(admitted) => {
                        caller = Some(admitted);
                        None
                    }
                    Err(refusal) => Some(*refusal),
                }
            }
            RequestKind::Route(..) => handler.refused_here(path),
        };
        if let Some(refusal) = refused {
            // A body already here is skipped; one still to come closes the connection.
            let close = request.close || self.buf.len() < request.body_len;
            if !close {
                self.buf.advance(request.body_len);
            }
            let written = self.send_response(refusal, close).await;
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
                handler.slot.wait_body();
                if !matches!(self.io.read_buf(&mut self.buf).await, Ok(n) if n > 0) {
                    return false;
                }
            }
        }
        handler.slot.busy();
        let body = self.buf.split_to(request.body_len).freeze();
        let written = match request.kind {
            RequestKind::Forward(route) => {
                // Set above for every forwarded request that was not refused.
                let Some(caller) = caller else {
                    return false;
                };
                // The parser only hands out a path that is text.
                let path = std::str::from_utf8(&head[request.path.clone()]).unwrap_or("/");
                let headers: Vec<(&[u8], &[u8])> = request
                    .forwarded
                    .iter()
                    .map(|(name, value)| (&head[name.clone()], &head[value.clone()]))
                    .collect();
                let hints: Vec<(&[u8], &[u8])> = request
                    .hints
                    .iter()
                    .map(|(name, value)| (&head[name.clone()], &head[value.clone()]))
                    .collect();
                let forward = ForwardRequest {
                    route,
                    path,
                    headers: &headers,
                    hints: &hints,
                    body,
                };
                match handler
                    .dispatch
                    .forward(&mut self.local, caller, forward)
                    .await
                {
                    Ok(reply) => {
                        let extra = reply.extra.as_ref().map(|(n, v)| (n, v));
                        self.send(
                            reply.status,
                            &reply.headers,
                            extra,
                            reply.body,
                            request.close,
                        )
                        .await
                    }
                    Err(refusal) => self.send_response(refusal, request.close).await,
                }
            }
            RequestKind::Route(method, uri, headers) => {
                let mut routed = Request::new(Body::from(body));
                *routed.method_mut() = method;
                *routed.uri_mut() = uri;
                *routed.headers_mut() = headers;
                let response = handler.dispatch.route(handler.peer, routed).await;
                self.send_response(response, request.close).await
            }
        };
        written.is_ok() && !request.close
    }
}
