//! The connection and the request body that keep their deadlines current as they are used: a
//! write that stalls marks its deadline, a body a handler waits on marks the body timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Slot, Source};

/// A client connection in the registry: writes that stall mark their deadline; dropping it
/// takes it out of the registry before the socket closes.
pub struct Guarded<I> {
    pub(super) io: I,
    pub(super) slot: Arc<Slot>,
    pub(super) source: Source,
    pub(super) write_armed: bool,
}

impl<I> Guarded<I> {
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    fn wrote(&mut self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Pending if !self.write_armed => {
                let deadline = self
                    .slot
                    .connections
                    .deadline(self.slot.connections.settings.write_timeout);
                self.slot.write.store(deadline, Ordering::Relaxed);
                self.write_armed = true;
            }
            Poll::Ready(_) if self.write_armed => {
                self.slot.write.store(0, Ordering::Relaxed);
                self.write_armed = false;
            }
            _ => {}
        }
    }
}

impl<I> Drop for Guarded<I> {
    fn drop(&mut self) {
        self.slot
            .connections
            .remove(self.source, self.slot.restricted, Some(&self.slot));
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&result);
        result
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

/// A request body hyper reads for a handler, held to the body timeout: while the handler waits
/// for more of it, the connection's read deadline runs.
pub struct ProgressBody<B> {
    body: B,
    slot: Arc<Slot>,
    waiting: bool,
}

impl<B> ProgressBody<B> {
    pub fn new(body: B, slot: Arc<Slot>) -> ProgressBody<B> {
        ProgressBody {
            body,
            slot,
            waiting: false,
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for ProgressBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match polled {
            Poll::Pending if !this.waiting => {
                this.slot.wait_body();
                this.waiting = true;
            }
            Poll::Ready(_) if this.waiting => {
                this.slot.busy();
                this.waiting = false;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for ProgressBody<B> {
    fn drop(&mut self) {
        if self.waiting {
            self.slot.busy();
        }
    }
}
