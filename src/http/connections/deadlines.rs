//! What each connection waits for and until when, and the sweeper that closes those past
//! their deadlines. Deadlines are milliseconds on a clock the sweeper moves on each round, so
//! the hot path stores one atomic and never reads the system's clock.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Connections;

/// How often deadlines are checked; a timeout fires up to this much late.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// What a connection's read waits for; kept in the low bits of its deadline.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Wait {
    /// A request head (a new connection's first, or one whose first bytes came).
    Head = 1,
    /// The next request on a kept-alive connection.
    Idle = 2,
    /// More of a request body.
    Body = 3,
}

impl Wait {
    pub(super) fn from_bits(bits: u64) -> Wait {
        match bits & 3 {
            1 => Wait::Head,
            2 => Wait::Idle,
            _ => Wait::Body,
        }
    }

    /// Closing a connection that waits for a request loses nothing that was asked.
    pub(super) fn evictable(self) -> bool {
        matches!(self, Wait::Head | Wait::Idle)
    }

    pub(super) fn reason(self) -> &'static str {
        match self {
            Wait::Head => "header_timeout",
            Wait::Idle => "idle_timeout",
            Wait::Body => "body_timeout",
        }
    }
}

/// One connection's deadlines, as the sweeper sees them.
pub struct Slot {
    pub(super) fd: RawFd,
    pub(super) index: AtomicUsize,
    /// The read's deadline in ms since the epoch, shifted left by two, with what it waits for
    /// ([`Wait`]) in the low bits; 0 for none.
    pub(super) read: AtomicU64,
    /// The blocked write's deadline in ms since the epoch; 0 for none.
    pub(super) write: AtomicU64,
    pub(super) shut: AtomicBool,
    /// Made to close for a newcomer, which took its place on the counts.
    pub(super) uncounted: AtomicBool,
    pub restricted: bool,
    pub(super) connections: Arc<Connections>,
}

impl Slot {
    pub(super) fn wait(&self, what: Wait, timeout: Duration) {
        let deadline = self.connections.deadline(timeout);
        self.read
            .store(deadline << 2 | what as u64, Ordering::Relaxed);
    }

    /// The connection waits for a request head (its first bytes came, or it is new).
    pub fn wait_head(&self) {
        self.wait(Wait::Head, self.connections.settings.header_timeout);
    }

    /// The connection waits, kept alive, for its next request.
    pub fn wait_idle(&self) {
        self.wait(Wait::Idle, self.connections.settings.idle_timeout);
    }

    /// The connection waits for more of a request body (called again on each progress).
    pub fn wait_body(&self) {
        self.wait(Wait::Body, self.connections.settings.body_timeout);
    }

    /// How long a request head may take (hyper's header timer, on a connection handed to it).
    pub fn header_timeout(&self) -> Duration {
        self.connections.settings.header_timeout
    }

    /// The connection reads nothing it must have in time (a request is being served).
    pub fn busy(&self) {
        self.read.store(0, Ordering::Relaxed);
    }

    /// Ends the connection's reads and writes; called under the registry's lock, while the
    /// descriptor is still the connection's.
    pub(super) fn shut_down(&self) {
        self.shut.store(true, Ordering::Relaxed);
        // SAFETY: the descriptor is open: a connection leaves the list (under the lock held
        // here) before its socket is closed. shutdown(2) takes no pointers.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }
}

impl Connections {
    /// Closes every connection past its deadline, and moves the clock on.
    pub(super) fn sweep(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.now_ms.store(now, Ordering::Relaxed);
        let inner = self.lock();
        for slot in &inner.slots {
            if slot.shut.load(Ordering::Relaxed) {
                continue;
            }
            let read = slot.read.load(Ordering::Relaxed);
            let write = slot.write.load(Ordering::Relaxed);
            let reason = if read != 0 && read >> 2 <= now {
                Wait::from_bits(read) as usize - 1
            } else if write != 0 && write <= now {
                3
            } else {
                continue;
            };
            self.timeouts[reason].inc();
            slot.shut_down();
        }
    }

    /// Sweeps for deadlines until the returned handle is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>) -> crate::background::AbortOnDrop<()> {
        let connections = self.clone();
        crate::background::AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                connections.sweep();
            }
        }))
    }

    pub(super) fn deadline(&self, after: Duration) -> u64 {
        self.now_ms.load(Ordering::Relaxed) + after.as_millis().max(1) as u64
    }
}
