//! What the server asks of the application behind it. The server reads requests and writes
//! answers; the application says which requests the load balancer forwards, checks and
//! forwards them, and answers every other request (through its router). Implemented once, by
//! the API (`api::dispatch`), and called through generics: nothing is boxed per request.

use std::future::Future;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::Response;
use axum::BoxError;
use hyper::body::Body as HttpBody;

/// The application behind the server. A clone serves each connection.
pub trait Dispatch: Clone + Send + Sync + 'static {
    /// What one connection keeps between the requests it forwards (metric series looked up
    /// once, say). Made when the connection starts.
    type Local: Default + Send;
    /// Who sent a forwarded request, as [`Dispatch::admit_forward`] found from its head.
    type Caller: Send;
    /// The body of a forwarded request's answer, as it arrives.
    type Body: HttpBody<Data = Bytes, Error: std::fmt::Display + Send> + Unpin + Send;

    /// The route a `POST` to `path` (without its query) is forwarded on, if the load balancer
    /// forwards it.
    fn forwarded_route(&self, path: &str) -> Option<&'static str>;

    /// The largest body of a forwarded request; a larger one is left to hyper and
    /// [`Dispatch::forward_streaming`].
    fn forward_body_limit(&self) -> usize;

    /// The largest body of another request the server reads itself before
    /// [`Dispatch::route`]; a larger one is left to hyper.
    fn route_body_limit(&self) -> usize;

    /// Whether a request for `path` (with or without its query) may be served on a restricted
    /// connection (one admitted into the places kept for agents).
    fn allowed_when_restricted(&self, path: &str) -> bool;

    /// The answer to a request the server refuses on its own.
    fn refusal(&self, why: Refusal) -> Response;

    /// Looks at a forwarded request's head before its body is read (or asked for with
    /// `100 Continue`): who sent it, or the answer that refuses it.
    fn admit_forward(
        &self,
        local: &mut Self::Local,
        head: &ForwardHead<'_>,
    ) -> Result<Self::Caller, Box<Response>>;

    /// Forwards a request whose body the server read, from the `caller` its head was
    /// admitted as: the answer to stream back as it arrives, or the one that says why not.
    fn forward(
        &self,
        local: &mut Self::Local,
        caller: Self::Caller,
        request: ForwardRequest<'_>,
    ) -> impl Future<Output = Result<Reply<Self::Body>, Response>> + Send;

    /// Forwards a request on `route` that hyper read (the server handed its connection over),
    /// its body still to be read: checks, forwarding and answer in one.
    fn forward_streaming<B>(
        &self,
        route: &'static str,
        request: Request<B>,
    ) -> impl Future<Output = Response> + Send
    where
        B: HttpBody<Data = Bytes, Error: std::fmt::Display + Send> + Unpin + Send + 'static;

    /// Answers any other request from `peer` (the admin API, the UI, `GET /v1/models`, wrong
    /// methods and unknown paths). The answer's body is read on the connection's thread.
    fn route<B>(
        &self,
        peer: SocketAddr,
        request: Request<B>,
    ) -> impl Future<Output = Response> + Send
    where
        B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
}

/// Why the server refuses a request without the application's say.
#[derive(Debug)]
pub enum Refusal {
    /// The bytes are not an HTTP/1.1 request (a 400); the connection closes after it.
    NotHttp(httparse::Error),
    /// The request is not allowed on a restricted connection (see
    /// [`Dispatch::allowed_when_restricted`]).
    Restricted,
}

/// A forwarded request's head, before its body is read.
pub struct ForwardHead<'a> {
    pub route: &'static str,
    /// Path and query.
    pub path: &'a str,
    /// The `Authorization` header's value.
    pub authorization: Option<&'a [u8]>,
    /// It carries [`super::headers::HOP_HEADER`]: it went through a load balancer already.
    pub looped: bool,
    /// It came on a restricted connection.
    pub restricted: bool,
}

/// A forwarded request, its body read.
pub struct ForwardRequest<'a> {
    pub route: &'static str,
    /// Path and query.
    pub path: &'a str,
    /// The headers a model server gets (see [`super::headers::forwarded_request_header`]),
    /// name and value as they came.
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// Its `X-` headers (a routing policy may read them; they are not forwarded unless they
    /// are in `headers` too).
    pub hints: &'a [(&'a [u8], &'a [u8])],
    pub body: Bytes,
}

/// An answer the server streams back as it arrives: no response object is built for it.
pub struct Reply<B> {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// One more header, written after `headers` in place of any of the same name among them.
    pub extra: Option<(axum::http::HeaderName, axum::http::HeaderValue)>,
    pub body: B,
}
