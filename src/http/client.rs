//! Our HTTP/1.1 client: a connection to a model server, one exchange at a time: the request goes out as
//! one write of its head and (small) body, the answer's head is parsed from the connection's own
//! buffer, and its body is read and un-chunked by whoever reads the answer (the client's
//! connection task). No task per connection and no channel between a request and its
//! connection: that is what a general-purpose client costs on every request, and on the
//! proxy's path it was a quarter of the work.
//!
//! An answer's length follows RFC 9112 §6.3 (see [`Framing::to_read`]); 1xx answers are
//! skipped. A connection is reusable once its answer was read to the end, when the model
//! server did not ask to close it and sent nothing past the answer.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::BytesMut;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::framing::Framing;
use super::headers::{content_length, hop_by_hop, lists_token};

/// A dialed connection, TLS or not.
pub type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// Largest answer head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in an answer head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;
/// Room made in the buffer for each read.
const READ_SIZE: usize = 8 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const ONE_WRITE: usize = 64 * 1024;

/// Why an exchange got no answer.
#[derive(Debug)]
pub enum Failure {
    /// The model server closed (or reset) the connection before any answer: it may never have
    /// seen the request.
    Closed(String),
    /// Anything else: a malformed answer, an unsupported one.
    Failed(String),
}

/// A connection to a model server and the bytes read from it that nothing used yet.
pub struct Conn {
    /// Boxed: a TLS stream is over a kilobyte, and a connection moves from the pool to the
    /// request to the answer's body and back on every request.
    io: Box<Io>,
    buf: BytesMut,
}

/// An answer's status and end-to-end headers (those of its connection are left out).
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// How far the reading of a chunked answer got.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Next comes a chunk-size line.
    Size,
    /// Bytes of the current chunk still to come.
    Data(u64),
    /// Next comes the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailer,
}

/// What the buffer holds for the body reader.
enum Step {
    Data(Bytes),
    End,
    NeedMore,
}

/// An answer's body as it arrives, read from its connection.
pub struct Answer {
    /// `None` once failed (the connection is closed with it) or handed back for reuse.
    conn: Option<Conn>,
    /// What is left of the body: a length counts down, and reading ends at [`Framing::None`].
    framing: Framing,
    /// Where a chunked body's reading is (read only while `framing` is chunked).
    chunk: Chunk,
    keep_alive: bool,
}

fn io_failure(e: &io::Error, doing: &str) -> Failure {
    let text = format!("{doing}: {e}");
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Failure::Closed(text),
        _ => Failure::Failed(text),
    }
}

fn malformed(what: impl std::fmt::Display) -> Failure {
    Failure::Failed(format!(
        "the model server's answer is not valid HTTP/1.1: {what}"
    ))
}

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn {
            io: Box::new(io),
            buf: BytesMut::with_capacity(READ_SIZE),
        }
    }

    /// Whether an idle connection can no longer be used: the model server closed it, reset it
    /// or sent something unasked. Looks without waiting; on an idle socket whose last read
    /// found nothing more, tokio answers from its readiness flags without a system call.
    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_ready()
    }

    /// Sends a request (`head` ends with its blank line) and reads the answer's head, skipping
    /// interim (1xx) answers. The body is read through the returned [`Answer`].
    pub async fn exchange(
        mut self,
        mut head: Vec<u8>,
        body: &[u8],
    ) -> Result<(Head, Answer), Failure> {
        let written = if body.len() <= ONE_WRITE {
            head.extend_from_slice(body);
            self.io.write_all(&head).await
        } else {
            match self.io.write_all(&head).await {
                Ok(()) => self.io.write_all(body).await,
                Err(e) => Err(e),
            }
        };
        written
            .and(self.io.flush().await)
            .map_err(|e| io_failure(&e, "could not send the request"))?;
        loop {
            if self.buf.is_empty() {
                // Nothing to parse yet: read first.
            } else if let Some((head, framing, keep_alive)) = self.parse_head()? {
                return Ok((
                    head,
                    Answer {
                        conn: Some(self),
                        framing,
                        chunk: Chunk::Size,
                        keep_alive,
                    },
                ));
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(malformed("its head is larger than 64 KiB"));
            }
            self.buf.reserve(READ_SIZE);
            let read = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| io_failure(&e, "could not read the answer"))?;
            if read == 0 {
                return Err(Failure::Closed(
                    "the model server closed the connection before answering".into(),
                ));
            }
        }
    }

    /// The answer's head if the buffer holds all of it (it is then taken from the buffer);
    /// interim answers are dropped on the way.
    #[allow(clippy::type_complexity)]
    fn parse_head(&mut self) -> Result<Option<(Head, Framing, bool)>, Failure> {
        loop {
            // Left uninitialized: the parser fills what it uses.
            let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                &self.buf,
                &mut lines,
            ) {
                Ok(httparse::Status::Complete(length)) => length,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(malformed(e)),
            };
            let code = parsed.code.unwrap_or_default();
            let status = StatusCode::from_u16(code).map_err(malformed)?;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(malformed("it switched protocols"));
            }
            if status.is_informational() {
                let _ = self.buf.split_to(length);
                continue;
            }
            let http11 = parsed.version == Some(1);
            // Header values are kept as slices of the head's bytes, not copied.
            let start = self.buf.as_ptr() as usize;
            let mut kept: Vec<(HeaderName, std::ops::Range<usize>)> =
                Vec::with_capacity(parsed.headers.len());
            let mut length_header: Option<u64> = None;
            let mut chunked = false;
            let mut other_coding = false;
            let mut close = !http11;
            for line in parsed.headers.iter() {
                let name = HeaderName::from_bytes(line.name.as_bytes()).map_err(malformed)?;
                if name == header::CONTENT_LENGTH {
                    let n = content_length(line.value)
                        .ok_or_else(|| malformed("a bad content-length"))?;
                    if length_header.is_some_and(|earlier| earlier != n) {
                        return Err(malformed("two different content-lengths"));
                    }
                    length_header = Some(n);
                } else if name == header::TRANSFER_ENCODING {
                    // Only the last coding decides: `gzip, chunked` is chunked.
                    let last = line.value.rsplit(|b| *b == b',').next().unwrap_or_default();
                    chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
                    other_coding = !chunked;
                } else if name == header::CONNECTION {
                    if lists_token(line.value, b"close") {
                        close = true;
                    } else if !http11 && lists_token(line.value, b"keep-alive") {
                        close = false;
                    }
                }
                if hop_by_hop(&name) {
                    continue;
                }
                let at = line.value.as_ptr() as usize - start;
                kept.push((name, at..at + line.value.len()));
            }
            let (framing, ends_connection) =
                Framing::to_read(code, chunked, other_coding, length_header);
            close |= ends_connection;
            let bytes = self.buf.split_to(length).freeze();
            let mut headers = HeaderMap::with_capacity(kept.len());
            for (name, range) in kept {
                // A length sent next to a transfer coding is not the body's: the client gets
                // the body re-framed.
                if name == header::CONTENT_LENGTH && (chunked || other_coding) {
                    continue;
                }
                let value =
                    HeaderValue::from_maybe_shared(bytes.slice(range)).map_err(malformed)?;
                headers.append(name, value);
            }
            return Ok(Some((Head { status, headers }, framing, !close)));
        }
    }

    /// Reads what the model server sent next into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let filled = self.buf.len();
        self.buf.resize(filled + READ_SIZE, 0);
        let mut read = ReadBuf::new(&mut self.buf[filled..]);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut read);
        let n = read.filled().len();
        self.buf.truncate(filled + n);
        polled.map_ok(|()| n)
    }
}

/// Where the first `\n` of `buf` is, if within `MAX_LINE` bytes.
fn line_end(buf: &[u8]) -> Result<Option<usize>, io::Error> {
    match buf.iter().take(MAX_LINE).position(|b| *b == b'\n') {
        Some(at) => Ok(Some(at)),
        None if buf.len() >= MAX_LINE => Err(bad_chunk("a line longer than 4 KiB")),
        None => Ok(None),
    }
}

fn bad_chunk(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the model server's chunked answer is malformed: {what}"),
    )
}

impl Answer {
    /// Whether the whole body was read.
    pub fn is_end(&self) -> bool {
        self.framing == Framing::None
    }

    /// Bytes of the body still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::None => Some(0),
            _ => None,
        }
    }

    /// The connection, for the next request, once the body was read to its end, if the model
    /// server keeps it open and sent nothing more.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if self.is_end() && self.keep_alive && self.conn.as_ref()?.buf.is_empty() {
            self.conn.take()
        } else {
            None
        }
    }

    /// The next piece of the body; `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            match self.step() {
                Ok(Step::Data(data)) => {
                    // Framing already here (a chunk's end, the last chunk) is read now, so
                    // the end shows in `is_end` without another poll. An error is reported by
                    // the next poll, which finds the same bytes.
                    let _ = self.step_framing();
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if self.framing == Framing::UntilClose => {
                    self.framing = Framing::None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the model server closed the connection before the end of its answer",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    /// Takes what the buffer holds of the body: data, its end, or nothing yet.
    fn step(&mut self) -> Result<Step, io::Error> {
        self.step_framing()?;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Step::End);
        };
        let buf = &mut conn.buf;
        let wanted = match (self.framing, self.chunk) {
            (Framing::None, _) => return Ok(Step::End),
            (Framing::Length(n), _) | (Framing::Chunked, Chunk::Data(n)) => n,
            (Framing::UntilClose, _) => u64::MAX,
            (Framing::Chunked, _) => return Ok(Step::NeedMore),
        };
        if buf.is_empty() {
            return Ok(Step::NeedMore);
        }
        let take = usize::try_from(wanted).unwrap_or(usize::MAX).min(buf.len());
        let data = buf.split_to(take).freeze();
        let left = wanted - take as u64;
        match self.framing {
            Framing::Length(_) if left == 0 => self.framing = Framing::None,
            Framing::Length(_) => self.framing = Framing::Length(left),
            Framing::Chunked if left == 0 => self.chunk = Chunk::DataEnd,
            Framing::Chunked => self.chunk = Chunk::Data(left),
            _ => {}
        }
        Ok(Step::Data(data))
    }

    /// Reads chunk framing (sizes, chunk ends, trailers) from the buffer as far as it goes.
    fn step_framing(&mut self) -> Result<(), io::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let buf = &mut conn.buf;
        loop {
            if self.framing != Framing::Chunked {
                return Ok(());
            }
            match self.chunk {
                Chunk::Data(_) => return Ok(()),
                Chunk::Size => {
                    let Some(end) = line_end(buf)? else {
                        return Ok(());
                    };
                    let line = &buf[..end];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    // Chunk extensions (`;name=value`) are ignored.
                    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
                    let digits = std::str::from_utf8(digits.trim_ascii())
                        .ok()
                        .filter(|d| !d.is_empty() && d.len() <= 16)
                        .ok_or_else(|| bad_chunk("a bad chunk size"))?;
                    let size = u64::from_str_radix(digits, 16)
                        .map_err(|_| bad_chunk("a bad chunk size"))?;
                    let _ = buf.split_to(end + 1);
                    self.chunk = if size == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::DataEnd => {
                    let ending = if buf.starts_with(b"\r\n") {
                        2
                    } else if buf.starts_with(b"\n") {
                        1
                    } else if buf.is_empty() || buf[..] == b"\r"[..] {
                        return Ok(());
                    } else {
                        return Err(bad_chunk("a chunk longer than its size"));
                    };
                    let _ = buf.split_to(ending);
                    self.chunk = Chunk::Size;
                }
                Chunk::Trailer => {
                    let Some(end) = line_end(buf)? else {
                        return Ok(());
                    };
                    // Trailer fields are dropped: the client's answer has none.
                    let blank = end == 0 || (end == 1 && buf[0] == b'\r');
                    let _ = buf.split_to(end + 1);
                    if blank {
                        self.framing = Framing::None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
