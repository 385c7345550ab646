//! Every open client connection, and the limits and timeouts that keep slow, idle or hostile
//! clients from exhausting the server (as nginx's `client_header_timeout`,
//! `keepalive_timeout`, `client_body_timeout`, `send_timeout` and `worker_connections` do).
//!
//! - **Admission** (at accept): a source address (an IPv6 /64 counts as one) over its cap is
//!   refused at once. At the global cap the connection that has waited longest for a request
//!   head (idle keep-alive, or a head still trickling in) is closed to make room; when none is
//!   waiting, the new connection is refused. The last [`ConnectionSettings::agent_reserve`]
//!   places below the cap are kept for the agents: a connection admitted into them is
//!   *restricted* and serves only the requests the application allows there (the agents'
//!   register and heartbeat, and `/healthz`; see [`super::Dispatch::allowed_when_restricted`]),
//!   so heartbeats go on while `/v1` clients hold every other place.
//! - **Timeouts**: a connection says what it waits for (a head, the next request, a body) and
//!   until when; a write that cannot go on marks its own deadline. One task sweeps every
//!   connection twice a second and shuts down the socket of any past its deadline, which ends
//!   whatever read or write the connection waits on. The hot path pays one atomic store per
//!   change of phase and reads a clock the sweeper keeps, not the system's.
//!
//! Shutting a socket down from outside its task is safe only while its descriptor is open: a
//! connection is put in the sweeper's list after it lands on its thread and taken out (under
//! the same lock the sweeper holds) before its socket closes.
//!
//! Here: admission and the counts; [`deadlines`]: what each connection waits for and the
//! sweeper; [`guarded`]: the connection and request body that keep their deadlines current.

mod deadlines;
mod guarded;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::{Counter, Metrics};
pub use deadlines::Slot;
use deadlines::Wait;
pub use guarded::{Guarded, ProgressBody};

/// Connections looked at, at most, to find one to close at the global cap.
const EVICT_SCAN: usize = 1024;

#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Open client connections at most (0: no cap).
    pub max: usize,
    /// Open connections from one source address at most (0: no cap).
    pub per_source: usize,
    /// Places below `max` kept for agent requests.
    pub agent_reserve: usize,
    /// A request head must arrive whole within this, from its first byte (or from the accept).
    pub header_timeout: Duration,
    /// A kept-alive connection may wait this long for its next request.
    pub idle_timeout: Duration,
    /// A request body must make progress at least this often.
    pub body_timeout: Duration,
    /// A write to the client must make progress at least this often.
    pub write_timeout: Duration,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source address has its cap of open connections.
    PerSource,
    /// The server has its cap and no connection waits for a request.
    Full,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::PerSource => "per_source_limit",
            Refused::Full => "max_connections",
        }
    }
}

/// A source address as the per-source cap counts it: IPv4 as is, IPv6 by its /64 (one host
/// often holds a whole /64).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Source(u128);

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(u32::from(v4))),
                None => Source((u128::from(v6) >> 64) | (1 << 127)),
            },
        }
    }
}

/// The registry of open client connections: admission, places, deadlines.
pub struct Connections {
    settings: ConnectionSettings,
    epoch: Instant,
    /// Milliseconds since `epoch`, as of the sweeper's last round.
    now_ms: AtomicU64,
    inner: Mutex<Admitted>,
    refused_per_source: Counter,
    refused_full: Counter,
    evicted: Counter,
    timeouts: [Counter; 4],
}

/// What the registry counts and lists, under its lock.
#[derive(Default)]
struct Admitted {
    /// Admitted connections, by source.
    per_source: HashMap<Source, usize>,
    admitted: usize,
    /// Admitted connections not restricted to agent requests.
    full: usize,
    /// Connections on their threads, which the sweeper looks at.
    slots: Vec<Arc<Slot>>,
    /// Where the next search for a connection to close starts.
    cursor: usize,
}

const CLOSED: &str = "skylaunch_connections_closed_total";
const CLOSED_HELP: &str =
    "Client connections the server closed or refused to protect itself, by reason.";

impl Connections {
    pub fn new(settings: ConnectionSettings, metrics: &Metrics) -> Arc<Connections> {
        let counter = |reason| metrics.counter(CLOSED, CLOSED_HELP, &[("reason", reason)]);
        Arc::new(Connections {
            refused_per_source: counter(Refused::PerSource.as_str()),
            refused_full: counter(Refused::Full.as_str()),
            evicted: counter("evicted_at_max_connections"),
            timeouts: [
                counter(Wait::Head.reason()),
                counter(Wait::Idle.reason()),
                counter(Wait::Body.reason()),
                counter("write_timeout"),
            ],
            settings,
            epoch: Instant::now(),
            now_ms: AtomicU64::new(0),
            inner: Mutex::new(Admitted::default()),
        })
    }

    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.lock().admitted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Admitted> {
        self.inner
            .lock()
            .expect("connection registry lock is never poisoned")
    }

    /// Admits a connection from `peer`, or says why not.
    ///
    /// Below `max - agent_reserve` unrestricted connections, it is admitted as usual. Past
    /// that, a connection waiting for a request (idle, or its head still coming) is closed to
    /// make room, so a newcomer is served fully while others only idle; when every unrestricted
    /// connection is busy, the newcomer gets one of the agents' places (it may serve only agent
    /// requests). At `max`, with no connection to close, it is refused.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Ticket, Refused> {
        let source = Source::of(peer.ip());
        let mut inner = self.lock();
        let from_source = inner.per_source.get(&source).copied().unwrap_or(0);
        if self.settings.per_source > 0 && from_source >= self.settings.per_source {
            drop(inner);
            self.refused_per_source.inc();
            return Err(Refused::PerSource);
        }
        let max = self.settings.max;
        let full_places = match max {
            0 => usize::MAX,
            _ => max - self.settings.agent_reserve.min(max - 1),
        };
        let restricted = if inner.full < full_places || self.evict_one(&mut inner, Some(false)) {
            false
        } else if inner.admitted < max || self.evict_one(&mut inner, None) {
            true
        } else {
            drop(inner);
            self.refused_full.inc();
            return Err(Refused::Full);
        };
        inner.admitted += 1;
        inner.full += usize::from(!restricted);
        *inner.per_source.entry(source).or_default() += 1;
        Ok(Ticket {
            connections: self.clone(),
            source,
            restricted,
        })
    }

    /// Shuts down a connection waiting for a request, among up to [`EVICT_SCAN`] of them (only
    /// those whose `restricted` is `only`, if given): an idle kept-alive one first, else the one
    /// whose head is due soonest; and gives its place to the caller. Whether one was found.
    fn evict_one(&self, inner: &mut Admitted, only: Option<bool>) -> bool {
        let len = inner.slots.len();
        let mut best: Option<((bool, u64), usize)> = None;
        for step in 0..len.min(EVICT_SCAN) {
            let at = (inner.cursor + step) % len;
            let slot = &inner.slots[at];
            let read = slot.read.load(Ordering::Relaxed);
            if read == 0
                || !Wait::from_bits(read).evictable()
                || slot.uncounted.load(Ordering::Relaxed)
                || only.is_some_and(|r| r != slot.restricted)
            {
                continue;
            }
            // A kept-alive connection waiting for its next request goes first: it asked
            // nothing. A new one whose head is due may have sent it already (its bytes not
            // read yet), so among those the one waiting longest (a slow head) goes.
            let rank = (Wait::from_bits(read) != Wait::Idle, read >> 2);
            if best.is_none_or(|(best_rank, _)| rank < best_rank) {
                best = Some((rank, at));
            }
        }
        inner.cursor = inner.cursor.wrapping_add(EVICT_SCAN);
        let Some((_, at)) = best else {
            return false;
        };
        let victim = inner.slots[at].clone();
        victim.shut_down();
        // It is off the counts from now on, though its socket closes a moment later.
        victim.uncounted.store(true, Ordering::Relaxed);
        inner.admitted -= 1;
        inner.full -= usize::from(!victim.restricted);
        self.evicted.inc();
        true
    }

    /// Takes a closed connection off the counts (unless it was when it was made to close) and
    /// out of the sweeper's list.
    fn remove(&self, source: Source, restricted: bool, slot: Option<&Arc<Slot>>) {
        let mut inner = self.lock();
        let mut counted = true;
        if let Some(slot) = slot {
            counted = !slot.uncounted.load(Ordering::Relaxed);
            let at = slot.index.load(Ordering::Relaxed);
            if inner.slots.get(at).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                inner.slots.swap_remove(at);
                if let Some(moved) = inner.slots.get(at) {
                    moved.index.store(at, Ordering::Relaxed);
                }
            }
        }
        if counted {
            inner.admitted -= 1;
            inner.full -= usize::from(!restricted);
        }
        if let Some(n) = inner.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                inner.per_source.remove(&source);
            }
        }
    }
}

/// An admitted connection not yet on its thread. Dropping it gives its place back.
pub struct Ticket {
    connections: Arc<Connections>,
    source: Source,
    /// Admitted into the places kept for agents: only agent requests are served.
    pub restricted: bool,
}

impl Ticket {
    /// Puts the connection `io` in the sweeper's list; from now on its deadlines hold.
    pub fn open<I: AsRawFd>(self, io: I) -> Guarded<I> {
        let connections = self.connections.clone();
        let slot = Arc::new(Slot {
            fd: io.as_raw_fd(),
            index: AtomicUsize::new(0),
            read: AtomicU64::new(0),
            write: AtomicU64::new(0),
            shut: AtomicBool::new(false),
            uncounted: AtomicBool::new(false),
            restricted: self.restricted,
            connections: connections.clone(),
        });
        // A new connection owes its first head within the header timeout.
        slot.wait(Wait::Head, connections.settings.header_timeout);
        {
            let mut inner = connections.lock();
            slot.index.store(inner.slots.len(), Ordering::Relaxed);
            inner.slots.push(slot.clone());
        }
        let source = self.source;
        std::mem::forget(self);
        Guarded {
            io,
            slot,
            source,
            write_armed: false,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.connections.remove(self.source, self.restricted, None);
    }
}
