//! Header rules both sides of the wire share: how a `content-length` and a token list are
//! read, which headers belong to one connection only, and which request headers the load
//! balancer passes on to a model server.

use axum::http::{header, HeaderMap, HeaderName};

/// The header every request the load balancer forwards carries. A request that arrives with it
/// has been through a skylaunch load balancer already (a node's endpoint pointing back at one):
/// it is refused (508) instead of going round again.
pub const HOP_HEADER: &str = "x-skylaunch-hop";

/// Whether a request header name is [`HOP_HEADER`].
pub fn is_hop_header(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(HOP_HEADER.as_bytes())
}

/// Whether a model server gets a request header named `name` (in any case): those that
/// describe the request, none that authenticates the client to skylaunch (its API key, the
/// admin token, cookies).
pub fn forwarded_request_header(name: &[u8]) -> bool {
    [
        &b"content-type"[..],
        b"accept",
        b"accept-encoding",
        b"user-agent",
        b"x-request-id",
    ]
    .iter()
    .any(|known| name.eq_ignore_ascii_case(known))
        || name
            .get(..7)
            .is_some_and(|start| start.eq_ignore_ascii_case(b"openai-"))
}

/// A `content-length` value: digits only (no sign, no list), surrounding spaces allowed.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The `content-length` a message's headers declare, if one valid one.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    content_length(value.as_bytes())
}

/// Whether a comma-separated header value (`connection: keep-alive, Close`) lists `token`, in
/// any case.
pub fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// Headers of a model server's answer that belong to its connection, never passed on.
/// `content-length` is kept: the client gets the answer with the model server's length rather
/// than re-chunked, and a model server that dies before sending all of it leaves a visibly
/// short body.
pub fn hop_by_hop(name: &HeaderName) -> bool {
    // Known names compare as tags, not strings; `keep-alive` has no constant of its own.
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::HOST
        || name.as_str() == "keep-alive"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_plain_digits_and_tokens_are_listed_in_any_case() {
        assert_eq!(content_length(b" 42 "), Some(42));
        for bad in [
            &b"+5"[..],
            b"-1",
            b"5, 5",
            b"",
            b"0x10",
            b"99999999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
        assert!(lists_token(b"keep-alive, Close", b"close"));
        assert!(!lists_token(b"closed", b"close"));
    }
}
