//! Every open client connection, and the limits and timeouts that keep slow, idle or hostile
//! clients from exhausting the server (as nginx's `client_header_timeout`,
//! `keepalive_timeout`, `client_body_timeout`, `send_timeout` and `worker_connections` do).
//!
//! - **Admission** (at accept): a source address (an IPv6 /64 counts as one) over its cap is
//!   refused at once. At the global cap the connection that has waited longest for a request
//!   head (idle keep-alive, or a head still trickling in) is closed to make room; when none is
//!   waiting, the new connection is refused. The last [`ConnectionSettings::agent_reserve`]
//!   places below the cap are kept for the agents: a connection admitted into them serves only
//!   agent requests (register, heartbeat) and `/healthz`, so heartbeats go on while `/v1`
//!   clients hold every other place.
//! - **Timeouts**: a connection says what it waits for (a head, the next request, a body) and
//!   until when; a write that cannot go on marks its own deadline. One task sweeps every
//!   connection twice a second and shuts down the socket of any past its deadline, which ends
//!   whatever read or write the connection waits on. The hot path pays one atomic store per
//!   change of phase and reads a clock the sweeper keeps, not the system's.
//!
//! Shutting a socket down from outside its task is safe only while its descriptor is open: a
//! connection is put in the sweeper's list after it lands on its thread and taken out (under
//! the same lock the sweeper holds) before its socket closes.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::{Counter, Metrics};

/// How often deadlines are checked; a timeout fires up to this much late.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
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

/// What a connection's read waits for; kept in the low bits of its deadline.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wait {
    /// A request head (a new connection's first, or one whose first bytes came).
    Head = 1,
    /// The next request on a kept-alive connection.
    Idle = 2,
    /// More of a request body.
    Body = 3,
}

impl Wait {
    fn from_bits(bits: u64) -> Wait {
        match bits & 3 {
            1 => Wait::Head,
            2 => Wait::Idle,
            _ => Wait::Body,
        }
    }

    /// Closing a connection that waits for a request loses nothing that was asked.
    fn evictable(self) -> bool {
        matches!(self, Wait::Head | Wait::Idle)
    }

    fn reason(self) -> &'static str {
        match self {
            Wait::Head => "header_timeout",
            Wait::Idle => "idle_timeout",
            Wait::Body => "body_timeout",
        }
    }
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

pub struct Connections {
    settings: ConnectionSettings,
    epoch: Instant,
    /// Milliseconds since `epoch`, as of the sweeper's last round.
    now_ms: AtomicU64,
    inner: Mutex<Inner>,
    refused_per_source: Counter,
    refused_full: Counter,
    evicted: Counter,
    timeouts: [Counter; 4],
}

#[derive(Default)]
struct Inner {
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
            inner: Mutex::new(Inner::default()),
        })
    }

    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.lock().admitted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
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

    /// Shuts down the connection waiting for a request whose deadline is nearest, among up to
    /// [`EVICT_SCAN`] of them (only those whose `restricted` is `only`, if given), and gives
    /// its place to the caller. Whether one was found.
    fn evict_one(&self, inner: &mut Inner, only: Option<bool>) -> bool {
        let len = inner.slots.len();
        let mut best: Option<(u64, usize)> = None;
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
            if best.is_none_or(|(deadline, _)| read >> 2 < deadline) {
                best = Some((read >> 2, at));
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

    /// Closes every connection past its deadline, and moves the clock on.
    fn sweep(&self) {
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

    fn deadline(&self, after: Duration) -> u64 {
        self.now_ms.load(Ordering::Relaxed) + after.as_millis().max(1) as u64
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

/// One connection's deadlines, as the sweeper sees them.
pub struct Slot {
    fd: RawFd,
    index: AtomicUsize,
    /// The read's deadline in ms since the epoch, shifted left by two, with what it waits for
    /// ([`Wait`]) in the low bits; 0 for none.
    read: AtomicU64,
    /// The blocked write's deadline in ms since the epoch; 0 for none.
    write: AtomicU64,
    shut: AtomicBool,
    /// Made to close for a newcomer, which took its place on the counts.
    uncounted: AtomicBool,
    pub restricted: bool,
    connections: Arc<Connections>,
}

impl Slot {
    fn wait(&self, what: Wait, timeout: Duration) {
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

    /// The connection reads nothing it must have in time (a request is being served).
    pub fn busy(&self) {
        self.read.store(0, Ordering::Relaxed);
    }

    /// Ends the connection's reads and writes; called under the registry's lock, while the
    /// descriptor is still the connection's.
    fn shut_down(&self) {
        self.shut.store(true, Ordering::Relaxed);
        // SAFETY: the descriptor is open: a connection leaves the list (under the lock held
        // here) before its socket is closed. shutdown(2) takes no pointers.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }
}

/// A client connection in the registry: writes that stall mark their deadline; dropping it
/// takes it out of the registry before the socket closes.
pub struct Guarded<I> {
    io: I,
    slot: Arc<Slot>,
    source: Source,
    write_armed: bool,
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

/// Whether a request on a connection admitted into the agents' places may be served there:
/// agent requests and the health check.
pub fn allowed_when_restricted(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    path == "/healthz"
        || path == "/admin/nodes/register"
        || path
            .strip_prefix("/admin/nodes/")
            .and_then(|rest| rest.strip_suffix("/heartbeat"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// Raises this process's soft limit on open files to its hard limit (as Go's runtime and
/// nginx's `worker_rlimit_nofile` do), and warns when the connection cap cannot fit under it.
pub fn raise_open_files_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if got != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    // Each client connection is one descriptor and may hold a model-server connection; the
    // database, files and agents' processes need some more.
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    if max_connections > 0 && limit.rlim_cur < needed {
        tracing::warn!(
            open_files_limit = limit.rlim_cur,
            max_connections,
            "the open-files limit is low for --max-connections: raise `ulimit -n` (LimitNOFILE= under systemd) to about twice the connection cap, or lower the cap"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: usize, per_source: usize, reserve: usize) -> ConnectionSettings {
        ConnectionSettings {
            max,
            per_source,
            agent_reserve: reserve,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn a_source_over_its_cap_is_refused_and_others_are_not() {
        let c = Connections::new(settings(0, 2, 0), &Metrics::default());
        let a = c.admit(peer("10.0.0.1")).unwrap();
        let _b = c.admit(peer("10.0.0.1")).unwrap();
        assert_eq!(c.admit(peer("10.0.0.1")).err(), Some(Refused::PerSource));
        assert!(c.admit(peer("10.0.0.2")).is_ok());
        drop(a);
        assert!(
            c.admit(peer("10.0.0.1")).is_ok(),
            "a closed one frees its place"
        );
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let c = Connections::new(settings(0, 1, 0), &Metrics::default());
        let _a = c.admit(peer("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            c.admit(peer("2001:db8:1:2:ffff::9")).err(),
            Some(Refused::PerSource)
        );
        assert!(c.admit(peer("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn the_last_places_below_the_cap_are_for_agents_and_a_full_server_refuses() {
        let c = Connections::new(settings(4, 0, 2), &Metrics::default());
        let tickets: Vec<Ticket> = (0..4).map(|_| c.admit(peer("10.0.0.1")).unwrap()).collect();
        let restricted: Vec<bool> = tickets.iter().map(|t| t.restricted).collect();
        assert_eq!(restricted, [false, false, true, true]);
        // Nothing on a thread waits for a request: nothing can be closed for a newcomer.
        assert_eq!(c.admit(peer("10.0.0.9")).err(), Some(Refused::Full));
        assert_eq!(c.open(), 4);
    }

    #[test]
    fn only_agent_requests_and_the_health_check_pass_in_the_agents_places() {
        assert!(allowed_when_restricted("/admin/nodes/register?node_id=abc"));
        assert!(allowed_when_restricted("/admin/nodes/abc/heartbeat"));
        assert!(allowed_when_restricted("/healthz"));
        for path in [
            "/v1/chat/completions",
            "/admin/nodes",
            "/admin/nodes//heartbeat",
            "/admin/nodes/a/b/heartbeat",
            "/",
        ] {
            assert!(!allowed_when_restricted(path), "{path}");
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_connection_waiting_longest_for_a_request_makes_room() {
        use tokio::io::AsyncReadExt;
        let c = Connections::new(settings(2, 0, 0), &Metrics::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..2 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (io, peer) = listener.accept().await.unwrap();
            served.push(c.admit(peer).unwrap().open(io));
        }
        // The first is busy with a request; the second waits for its next one.
        served[0].slot().busy();
        served[1].slot().wait_idle();
        let newcomer = c.admit(peer("127.0.0.1")).expect("room is made");
        assert!(!newcomer.restricted);
        // The idle one's socket was shut down: its client sees the end.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), clients[1].read(&mut byte))
            .await
            .expect("the idle connection ends");
        assert!(matches!(read, Ok(0) | Err(_)));
        assert_eq!(c.open(), 2);
        drop(served);
        drop(newcomer);
        assert_eq!(c.open(), 0);
    }

    #[tokio::test]
    async fn the_sweeper_closes_a_connection_past_its_deadline_and_not_a_busy_one() {
        use tokio::io::AsyncReadExt;
        let mut s = settings(0, 0, 0);
        s.header_timeout = Duration::from_millis(1);
        let c = Connections::new(s, &Metrics::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (io, peer) = listener.accept().await.unwrap();
        let slow_served = c.admit(peer).unwrap().open(io);
        let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (io, peer) = listener.accept().await.unwrap();
        let busy_served = c.admit(peer).unwrap().open(io);
        busy_served.slot().busy();
        std::thread::sleep(Duration::from_millis(5));
        c.sweep();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut byte))
            .await
            .expect("the slow connection ends");
        assert!(matches!(read, Ok(0) | Err(_)));
        let still = tokio::time::timeout(Duration::from_millis(200), busy.read(&mut byte)).await;
        assert!(still.is_err(), "the busy connection is left alone");
        drop((slow_served, busy_served));
    }
}
