//! The accept loop: admits each connection (or refuses it at once), and hands it to a
//! connection thread, where [`super::server`] serves it until it closes.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::connections::{Connections, Refused};
use super::dispatch::Dispatch;
use super::server::{serve_connection, Handler};
use super::socket::no_delay;
use super::threads::ConnectionThreads;

/// Serves HTTP/1.1 on `listener` until `shutdown` completes; then stops accepting, lets each
/// open connection finish the request it is on, and returns once all are closed.
///
/// Each connection is admitted by `connections` (its caps and timeouts hold from then on), and
/// served on one of `threads`, in turn, each a thread with a single-threaded runtime of its
/// own (see [`super::threads`]). Its requests go to `dispatch`: read and answered by
/// [`super::server`] itself or, when it is not one that reader takes, by hyper's HTTP/1.1
/// server, without a general-purpose server's per-request service layers.
pub async fn serve<D: Dispatch>(
    listener: TcpListener,
    connections: Arc<Connections>,
    mut threads: ConnectionThreads,
    dispatch: D,
    shutdown: impl Future<Output = ()>,
) {
    // Dropping `stop` tells every connection to finish. Each holds a clone of `open`, so
    // `tracker.closed()` completes once the last one has closed.
    let (stop, stopping) = watch::channel(());
    let (tracker, open) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (mut io, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if accept_failed(e) {
                    // Not spinning on a failure that lasts (out of file descriptors, say).
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        () = &mut shutdown => break,
                    }
                }
                continue;
            }
        };
        let ticket = match connections.admit(peer) {
            Ok(ticket) => ticket,
            Err(why) => {
                refuse(&io, why);
                continue;
            }
        };
        // No Nagle delay: streamed tokens and small answers leave as soon as they are written.
        no_delay(&mut io);
        // Off this runtime's reactor, onto the connection thread's.
        let io = match io.into_std() {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "could not hand a connection to its thread");
                continue;
            }
        };
        let dispatch = dispatch.clone();
        let stopping = stopping.clone();
        let open = open.clone();
        threads.next_thread().spawn(async move {
            match TcpStream::from_std(io) {
                Ok(io) => {
                    let io = ticket.open(io);
                    let handler = Handler {
                        dispatch,
                        peer,
                        slot: io.slot().clone(),
                    };
                    serve_connection(io, handler, stopping).await
                }
                Err(e) => tracing::debug!(error = %e, "could not take a connection on its thread"),
            }
            drop(open);
        });
    }
    drop(listener);
    drop(stop);
    drop(open);
    tracker.closed().await;
    // Stops the connection threads.
    drop(threads);
}

/// Answers a connection refused at accept with a 503 if its socket takes it at once, and
/// closes it: a refusal never waits on the client.
fn refuse(io: &TcpStream, why: Refused) {
    let message = match why {
        Refused::PerSource => {
            "too many open connections from your address; close idle ones or try again shortly"
        }
        Refused::Full => "the control plane is at its connection limit; try again shortly",
    };
    let body = serde_json::json!({"error": {"code": "too_many_connections", "message": message, "reason": why.as_str()}})
        .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = io.try_write(answer.as_bytes());
    tracing::debug!(reason = why.as_str(), "refused a connection");
}

/// After a failed `accept`: whether accepting should wait a moment. A connection that went away
/// before it was taken is no matter; any other failure is logged.
fn accept_failed(e: std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return false;
    }
    tracing::error!(error = %e, "could not accept a connection; trying again in a second");
    true
}
