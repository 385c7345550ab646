//! The threads that serve client connections: one single-threaded tokio runtime each, and each
//! connection on one of them for its whole life.
//!
//! Why: on tokio's multi-threaded runtime a connection's task, its model-server connection and
//! the counters they touch move from core to core as events wake them, and on a busy small
//! machine that costs more CPU per request than the work itself (measured in
//! `docs/benchmarks.md`). Here a connection, the model-server connections it uses (kept per
//! thread, see `routing::upstream::set_thread_slot`) and their timers stay on one thread.
//!
//! Only the load balancer's own work runs on these threads. A request for the router (the admin
//! API, the UI, `GET /v1/models`) is handed to the main runtime, where the database's
//! connections, the launch jobs and every other task of the service live (see
//! [`super::Front::route`]).
//!
//! Dropping [`ConnectionThreads`] stops the runtimes (closing whatever connections they still
//! hold), waits for the threads, and closes the model-server connections they kept idle.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::watch;

use crate::routing::upstream::{cores, set_thread_slot};
use crate::routing::RoutingTable;

pub struct ConnectionThreads {
    handles: Vec<Handle>,
    /// Dropped to stop the runtimes.
    stop: Option<watch::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    /// The thread the next connection goes to.
    next: usize,
    table: Arc<RoutingTable>,
}

impl ConnectionThreads {
    /// Starts `count` threads (0: one per CPU core), each running its own runtime until
    /// dropped. `table`'s pooled connections made on them are closed when they stop.
    pub fn start(count: usize, table: Arc<RoutingTable>) -> io::Result<ConnectionThreads> {
        let count = match count {
            0 => cores(),
            n => n,
        };
        let (stop, stopped) = watch::channel(());
        let mut threads = ConnectionThreads {
            handles: Vec::new(),
            stop: Some(stop),
            threads: Vec::new(),
            next: 0,
            table,
        };
        for n in 1..=count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            threads.handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("skylaunch-conn-{n}"))
                .spawn(move || {
                    set_thread_slot(n);
                    runtime.block_on(async move {
                        // Ends when the sender is dropped.
                        while stopped.changed().await.is_ok() {}
                    });
                    // Dropping the runtime drops every task still on it.
                    drop(runtime);
                })?;
            threads.threads.push(thread);
        }
        Ok(threads)
    }

    /// The runtime of the thread that takes the next connection (each in turn).
    pub(super) fn next(&mut self) -> &Handle {
        let at = self.next % self.handles.len();
        self.next = at + 1;
        &self.handles[at]
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        drop(self.stop.take());
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a connection thread panicked");
            }
        }
        // Their runtimes are gone: nothing would drive the connections kept for them.
        self.table.close_threads_connections();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::fleet::status::NodeStatus;
    use crate::routing::table::{tests::node, Endpoint};
    use crate::routing::upstream::Connector;

    /// A model server on 127.0.0.1 answering `{}` to each request, over keep-alive
    /// connections; returns its URL and how many of its connections are open.
    async fn model_server() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut more = [0u8; 1024];
                    // Every request here has the two-byte body `{}`.
                    while let Ok(n @ 1..) = socket.read(&mut more).await {
                        request.extend_from_slice(&more[..n]);
                        if request.ends_with(b"\r\n\r\n{}") {
                            request.clear();
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                            if socket.write_all(answer).await.is_err() {
                                break;
                            }
                        }
                    }
                    counted.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (url, open)
    }

    /// One request to `endpoint`, its answer read to its end and its connection kept.
    async fn ask(endpoint: &Endpoint) {
        let target = endpoint.target.as_ref().unwrap();
        let head = target.post_head("/v1/completions", &[], 2);
        let (head, mut answer) = Connector::new(Duration::from_secs(2))
            .send(&endpoint.pool, target, head, b"{}")
            .await
            .unwrap();
        assert_eq!(head.status, 200);
        while let Some(data) = std::future::poll_fn(|cx| answer.poll_data(cx)).await {
            data.unwrap();
        }
        endpoint.pool.put(answer.take_reusable().expect("reusable"));
    }

    #[tokio::test]
    async fn stopping_the_threads_drops_their_tasks_and_closes_the_connections_kept_for_them() {
        let (url, open) = model_server().await;
        let table = Arc::new(RoutingTable::default());
        let mut ready = node("n1", "m", NodeStatus::Ready, Some(1.0));
        ready.endpoint_url = Some(url);
        table.update(&ready);
        let endpoint = table.endpoints("m").unwrap()[0].clone();

        let mut threads = ConnectionThreads::start(2, table.clone()).unwrap();
        // One request on each thread: each keeps its own connection, made by its own runtime.
        for _ in 0..2 {
            let endpoint = endpoint.clone();
            let asked = threads.next().spawn(async move { ask(&endpoint).await });
            asked.await.unwrap();
        }
        assert_eq!(endpoint.pool.idle(), 2, "one connection kept per thread");
        assert_eq!(open.load(Ordering::SeqCst), 2);

        // A task still running when the threads stop is dropped with its runtime.
        let (held, dropped) = tokio::sync::oneshot::channel::<()>();
        threads.next().spawn(async move {
            let _held = held;
            std::future::pending::<()>().await
        });
        drop(threads);
        assert!(dropped.await.is_err(), "the task was dropped");

        // Nothing would drive the kept connections any more: they are closed, not left for the
        // next request to fail on.
        assert_eq!(endpoint.pool.idle(), 0);
        for _ in 0..200 {
            if open.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(
            open.load(Ordering::SeqCst),
            0,
            "the model server saw them closed"
        );
        // This runtime reaches the model server as before, on a connection of its own.
        ask(&endpoint).await;
        assert_eq!(endpoint.pool.idle(), 1);
    }

    #[tokio::test]
    async fn connections_go_to_each_thread_in_turn() {
        let mut threads = ConnectionThreads::start(3, Arc::new(RoutingTable::default())).unwrap();
        let mut names = Vec::new();
        for _ in 0..6 {
            let name = threads
                .next()
                .spawn(async { std::thread::current().name().map(str::to_string) });
            names.push(name.await.unwrap().unwrap());
        }
        assert_eq!(
            names,
            [1, 2, 3, 1, 2, 3].map(|n| format!("skylaunch-conn-{n}"))
        );
    }
}
