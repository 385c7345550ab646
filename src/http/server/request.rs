//! Reading a request head from the connection's buffer: where its parts are, and whether the
//! server serves it itself or leaves the connection to hyper.

use std::mem::MaybeUninit;
use std::ops::Range;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::http::dispatch::Dispatch;
use crate::http::headers::{content_length, forwarded_request_header, is_hop_header, lists_token};

/// Most header lines in a request head read here.
const MAX_HEADERS: usize = 64;

/// Where a request's parts are in its head.
pub(super) struct ParsedHead {
    pub(super) head_len: usize,
    pub(super) kind: RequestKind,
    /// Path and query.
    pub(super) path: Range<usize>,
    pub(super) body_len: usize,
    /// The client asked to close the connection after this answer.
    pub(super) close: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub(super) expects_continue: bool,
    pub(super) authorization: Option<Range<usize>>,
    /// It carries the load balancer's hop header: it went through one already.
    pub(super) looped: bool,
    /// For a forwarded request: the headers a model server gets (name, value).
    pub(super) forwarded: Vec<(Range<usize>, Range<usize>)>,
    /// For a forwarded request: its `X-` headers, which a routing policy may read (`session`).
    pub(super) hints: Vec<(Range<usize>, Range<usize>)>,
}

/// Who answers a request the server reads itself.
pub(super) enum RequestKind {
    /// The load balancer forwards it, on this route.
    Forward(&'static str),
    /// The application's router: its method, target and headers.
    Route(Method, Uri, HeaderMap),
}

// Made once per request and moved once: boxing the head would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Parsed {
    Ready(ParsedHead),
    /// Not a request read here: hyper serves it.
    Other,
    /// Not HTTP/1.1: answered with a 400, and the connection closed.
    Malformed(httparse::Error),
    /// The head is not all here yet.
    Partial,
}

/// What `buf` starts with: a request served here (a forwarded one with a body within
/// [`Dispatch::forward_body_limit`], or one for the router with a body within
/// [`Dispatch::route_body_limit`]), or something else.
pub(super) fn parse<D: Dispatch>(buf: &[u8], dispatch: &D) -> Parsed {
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
        dispatch.forwarded_route(path.split('?').next().unwrap_or_default())
    } else {
        None
    };
    let (kind, limit) = match forward {
        Some(route) => (RequestKind::Forward(route), dispatch.forward_body_limit()),
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
            (
                RequestKind::Route(method, uri, headers),
                dispatch.route_body_limit(),
            )
        }
    };
    let start = buf.as_ptr() as usize;
    let at = |part: &[u8]| {
        let from = part.as_ptr() as usize - start;
        from..from + part.len()
    };
    let forwarding = matches!(kind, RequestKind::Forward(_));
    let mut request = ParsedHead {
        head_len,
        kind,
        path: at(path.as_bytes()),
        body_len: 0,
        close: false,
        expects_continue: false,
        authorization: None,
        looped: false,
        forwarded: Vec::with_capacity(if forwarding { parsed.headers.len() } else { 0 }),
        hints: Vec::new(),
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
        } else {
            if forwarded_request_header(name) {
                request.forwarded.push((at(name), at(line.value)));
            }
            if name.len() > 2 && name[..2].eq_ignore_ascii_case(b"x-") {
                request.hints.push((at(name), at(line.value)));
            }
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
