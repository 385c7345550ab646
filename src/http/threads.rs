//! The threads that serve client connections: one single-threaded tokio runtime each, and each
//! connection on one of them for its whole life.
//!
//! Why: on tokio's multi-threaded runtime a connection's task, its model-server connection and
//! the counters they touch move from core to core as events wake them, and on a busy small
//! machine that costs more CPU per request than the work itself (measured in
//! `docs/benchmarks.md`). Here a connection, the model-server connections it uses (kept per
//! thread, see [`connection_thread`]) and their timers stay on one thread.
//!
//! Only the load balancer's own work should run on these threads: the application hands
//! everything else (the admin API, the UI) to its main runtime, where the database's
//! connections, the launch jobs and every other task of the service live (see
//! [`super::Dispatch::route`]).
//!
//! Dropping [`ConnectionThreads`] stops the runtimes (closing whatever connections they still
//! hold), waits for the threads, then runs what [`ConnectionThreads::on_stop`] was given (the
//! load balancer closes the model-server connections the threads kept idle).

use std::cell::Cell;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::watch;

thread_local! {
    /// Which connection thread this is, from 1; 0 on any other thread.
    static CONNECTION_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Which of the connection threads the current thread is, from 1 (0 when it is none of them,
/// e.g. the main runtime's). Whatever must stay with one runtime (a model-server connection
/// is driven by the runtime that made it) can be kept apart per thread by it.
#[inline]
pub fn connection_thread() -> usize {
    CONNECTION_THREAD.get()
}

/// The machine's CPU cores (1 when it cannot be told): how many connection threads there are
/// by default.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub struct ConnectionThreads {
    handles: Vec<Handle>,
    /// Dropped to stop the runtimes.
    stop: Option<watch::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    /// The thread the next connection goes to.
    next: usize,
    /// Run once the threads have stopped.
    on_stop: Option<Box<dyn FnOnce() + Send>>,
}

impl ConnectionThreads {
    /// Starts `count` threads (0: one per CPU core), each running its own runtime until
    /// dropped.
    pub fn start(count: usize) -> io::Result<ConnectionThreads> {
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
            on_stop: None,
        };
        for n in 1..=count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            threads.handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("skylaunch-conn-{n}"))
                .spawn(move || {
                    CONNECTION_THREAD.set(n);
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

    /// Runs `f` once the threads have stopped, when this is dropped: whatever they kept for
    /// their runtimes (idle model-server connections) can be let go then, as nothing drives
    /// it any more.
    pub fn on_stop(mut self, f: impl FnOnce() + Send + 'static) -> ConnectionThreads {
        self.on_stop = Some(Box::new(f));
        self
    }

    /// The runtime of the thread that takes the next connection (each in turn).
    pub fn next_thread(&mut self) -> &Handle {
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
        // Their runtimes are gone: nothing would drive what was kept for them.
        if let Some(on_stop) = self.on_stop.take() {
            on_stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_each_thread_in_turn() {
        let mut threads = ConnectionThreads::start(3).unwrap();
        let mut names = Vec::new();
        for _ in 0..6 {
            let name = threads
                .next_thread()
                .spawn(async { std::thread::current().name().map(str::to_string) });
            names.push(name.await.unwrap().unwrap());
        }
        assert_eq!(
            names,
            [1, 2, 3, 1, 2, 3].map(|n| format!("skylaunch-conn-{n}"))
        );
    }
}
