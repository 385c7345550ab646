//! How a message's body is delimited on an HTTP/1.1 connection (RFC 9112 §6): one type for
//! both sides. The server picks it for each answer it writes; the client reads a model server's
//! answer by it, counting a length down to its end.

use axum::http::{HeaderMap, StatusCode};

use super::headers::declared_length;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (1xx, 204, 304), or, for an answer being read, none left to read.
    None,
    /// This many bytes (for an answer being read: still to come).
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// The body ends when the sender closes the connection (HTTP/1.0, or an unknown transfer
    /// coding); only ever read, never written.
    UntilClose,
}

impl Framing {
    /// How the server writes an answer: no body for 1xx, 204 and 304; `content-length` when the
    /// body's size is known (`exact`, else the length the handler declared in `headers`);
    /// chunked otherwise.
    pub fn to_write(status: StatusCode, exact: Option<u64>, headers: &HeaderMap) -> Framing {
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::None
        } else if let Some(n) = exact.or_else(|| declared_length(headers)) {
            // A length the handler declared for a stream (a file) is kept, as hyper does: the
            // client sees the size up front, and a stream that ends short breaks the answer.
            Framing::Length(n)
        } else {
            Framing::Chunked
        }
    }

    /// How a model server's answer with status `code` is read: none for 204 and 304; chunked
    /// when the last transfer coding is `chunked`; until the close for another coding;
    /// `content-length` otherwise; else until the close. The second value says whether the
    /// framing itself ends the connection.
    pub fn to_read(
        code: u16,
        chunked: bool,
        other_coding: bool,
        length: Option<u64>,
    ) -> (Framing, bool) {
        if code == 204 || code == 304 {
            (Framing::None, false)
        } else if chunked {
            (Framing::Chunked, false)
        } else if other_coding {
            (Framing::UntilClose, true)
        } else if let Some(n) = length {
            (
                if n == 0 {
                    Framing::None
                } else {
                    Framing::Length(n)
                },
                false,
            )
        } else {
            (Framing::UntilClose, true)
        }
    }
}
